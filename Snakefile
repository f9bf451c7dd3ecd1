# cotmech: a mechanistic study of chain-of-thought reasoning (Dutta et al., TMLR 2024) as one DAG.
# Every step is a rule file in workflow/rules/; each registers its final targets with `register_targets`.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/tasks.smk"


# Later steps are included in DAG order when present (one file per step).
for _step in STEPS:
    if os.path.exists(f"workflow/rules/{_step}.smk"):

        include: f"workflow/rules/{_step}.smk"


rule all:
    default_target: True
    input:
        all_targets(),
