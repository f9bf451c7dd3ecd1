# cotmech: a mechanistic study of chain-of-thought reasoning (Dutta et al., TMLR 2024) as one DAG.
# Every step is a rule file in workflow/rules/; each registers its final targets with `register_targets`.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


# One file per step, in DAG order (report last: it collects every target registered before it).
include: "workflow/rules/common.smk"
include: "workflow/rules/tasks.smk"
include: "workflow/rules/generation.smk"
include: "workflow/rules/activations.smk"
include: "workflow/rules/patching.smk"
include: "workflow/rules/prior_shift.smk"
include: "workflow/rules/roles.smk"
include: "workflow/rules/circuits.smk"
include: "workflow/rules/probing.smk"
include: "workflow/rules/flow.smk"
include: "workflow/rules/horizon.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),
