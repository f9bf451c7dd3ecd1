# Step: head patching (study.md E2, E3, §5): exact activation patching and AtP per subtask, path patching,
# induction heads on the synthetic cloze task. Config section `patching` (schema documents every key).

PATCH = config["patching"]
PATCH_DATASETS = list(PATCH["datasets"])
for _d in PATCH_DATASETS:
    if _d not in DATASETS:
        raise ValueError(f"config patching.datasets: {_d!r} is not a dataset of config 'datasets' ({DATASETS})")
PATCH_SUBTASKS = [int(k) for k in PATCH["subtasks"]]
PATCH_SHARDS = int(PATCH["shards"])
PATH_SUBTASKS = [int(k) for k in PATCH["path"]["subtasks"]]
INDUCTION_CORRUPTIONS = ["class", "subject", "property"]


rule patch_heads:
    """Single-head activation patching (config patching.method) and, if enabled, AtP: one subtask, one pair range."""
    output:
        raw=f"{MRES}/patching/{{dataset}}/raw/{PATCH['method']}/subtask{{k}}.shard{{i}}.safetensors",
        atp=[f"{MRES}/patching/{{dataset}}/raw/atp/subtask{{k}}.shard{{i}}.safetensors"] if PATCH["atp"] else [],
    input:
        pairs=f"{MRES}/pairs/{{dataset}}.jsonl",
        script="scripts/patch_heads.py",
        code=code_inputs("scripts/patch_heads.py"),
    params:
        settings=lambda w: settings("model", "patching", "seed"),
        shards=PATCH_SHARDS,
        method=PATCH["method"],
        n_pairs=PATCH["n_pairs"] or "all",
        atp=lambda w, output: f"--atp-raw {shlex.quote(output.atp[0])}" if PATCH["atp"] else "",
    log:
        logpath("patch_heads", "{dataset}", "subtask{k}.shard{i}"),
    threads: MODEL_THREADS
    resources:
        **model_resources(),
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "python {input.script:q} --pairs {input.pairs:q} --method {params.method} --subtask {wildcards.k}"
        " --n-pairs {params.n_pairs} --shard {wildcards.i}/{params.shards} --settings {params.settings:q}"
        " --threads {threads} --raw {output.raw:q} {params.atp} > {log:q} 2>&1"


rule merge_patching:
    """Head table (bootstrap CI over pairs) and layer × head heat-map of one subtask (config patching.method)."""
    output:
        table=f"{MRES}/patching/{{dataset}}/subtask{{k}}.parquet",
        png=f"{MRES}/patching/{{dataset}}/subtask{{k}}.png",
        pdf=f"{MRES}/patching/{{dataset}}/subtask{{k}}.pdf",
    input:
        raw=patch_raw(PATCH["method"], PATCH_SHARDS),
        script="scripts/patch_heads.py",
        code=code_inputs("scripts/patch_heads.py"),
    params:
        settings=lambda w: settings("patching", "seed"),
    log:
        logpath("merge_patching", "{dataset}", "subtask{k}"),
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "python {input.script:q} --merge {input.raw:q} --subtask {wildcards.k} --settings {params.settings:q}"
        " --out {output.table:q} --figure {output.png:q} > {log:q} 2>&1"


# AtP head table and heat-map of one subtask: merge_patching on the AtP shards.
use rule merge_patching as merge_atp with:
    output:
        table=f"{MRES}/patching/{{dataset}}/atp/subtask{{k}}.parquet",
        png=f"{MRES}/patching/{{dataset}}/atp/subtask{{k}}.png",
        pdf=f"{MRES}/patching/{{dataset}}/atp/subtask{{k}}.pdf",
    input:
        raw=patch_raw("atp", PATCH_SHARDS),
        script="scripts/patch_heads.py",
        code=code_inputs("scripts/patch_heads.py"),
    log:
        logpath("merge_atp", "{dataset}", "subtask{k}"),


rule atp_vs_exact:
    """Spearman rank correlation of AtP with activation patching, per subtask (when is AtP screening safe?)."""
    output:
        f"{MRES}/patching/{{dataset}}/atp_vs_exact.csv",
    input:
        exact=expand(f"{MRES}/patching/{{{{dataset}}}}/subtask{{k}}.parquet", k=PATCH_SUBTASKS),
        atp=expand(f"{MRES}/patching/{{{{dataset}}}}/atp/subtask{{k}}.parquet", k=PATCH_SUBTASKS),
        script="scripts/patch_heads.py",
        code=code_inputs("scripts/patch_heads.py"),
    log:
        logpath("atp_vs_exact", "{dataset}"),
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "python {input.script:q} --exact {input.exact:q} --atp {input.atp:q} --out {output:q} > {log:q} 2>&1"


rule path_patch:
    """Path patching: top first-half heads (senders) -> logits / top second-half heads' q, k, v (receivers)."""
    output:
        table=f"{MRES}/patching/{{dataset}}/path/path_patching.parquet",
        png=f"{MRES}/patching/{{dataset}}/path/path_patching.png",
        pdf=f"{MRES}/patching/{{dataset}}/path/path_patching.pdf",
    input:
        pairs=f"{MRES}/pairs/{{dataset}}.jsonl",
        tables=expand(f"{MRES}/patching/{{{{dataset}}}}/subtask{{k}}.parquet", k=PATH_SUBTASKS),
        script="scripts/path_patch.py",
        code=code_inputs("scripts/path_patch.py"),
    params:
        settings=lambda w: settings("model", "patching", "seed"),
    log:
        logpath("path_patch", "{dataset}"),
    threads: MODEL_THREADS
    resources:
        **model_resources(),
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "python {input.script:q} --pairs {input.pairs:q} --tables {input.tables:q} --settings {params.settings:q}"
        " --threads {threads} --out {output.table:q} --figure {output.png:q} > {log:q} 2>&1"


rule induction_cloze:
    """E3: build the cloze pairs (screened once) and patch every head (exact) for each corruption type."""
    output:
        raw=expand(f"{MRES}/induction/raw/{{c}}.safetensors", c=INDUCTION_CORRUPTIONS),
        pairs=expand(f"{MRES}/induction/raw/{{c}}.jsonl", c=INDUCTION_CORRUPTIONS),
    input:
        script="scripts/induction_heads.py",
        code=code_inputs("scripts/induction_heads.py"),
    params:
        settings=lambda w: settings("model", "patching", "seed"),
        folder=lambda w, output: os.path.dirname(output.raw[0]),
    log:
        logpath("induction_cloze"),
    threads: MODEL_THREADS
    resources:
        **model_resources(),
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "python {input.script:q} --raw-dir {params.folder:q} --settings {params.settings:q} --threads {threads}"
        " > {log:q} 2>&1"


rule induction_heads:
    """E3: induction score per head = mean of the three corruptions' normalised scores; heat-map."""
    output:
        table=f"{MRES}/induction/scores.parquet",
        png=f"{MRES}/induction/scores.png",
        pdf=f"{MRES}/induction/scores.pdf",
    input:
        raw=expand(f"{MRES}/induction/raw/{{c}}.safetensors", c=INDUCTION_CORRUPTIONS),
        script="scripts/induction_heads.py",
        code=code_inputs("scripts/induction_heads.py"),
    params:
        settings=lambda w: settings("patching", "seed"),
    log:
        logpath("induction_heads"),
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "python {input.script:q} --merge {input.raw:q} --settings {params.settings:q}"
        " --out {output.table:q} --figure {output.png:q} > {log:q} 2>&1"


register_targets(
    expand(f"{MRES}/patching/{{dataset}}/subtask{{k}}.parquet", dataset=PATCH_DATASETS, k=PATCH_SUBTASKS),
    expand(f"{MRES}/patching/{{dataset}}/path/path_patching.parquet", dataset=PATCH_DATASETS)
    if PATH_SUBTASKS
    else [],
    f"{MRES}/induction/scores.parquet",
)
if PATCH["atp"]:
    register_targets(expand(f"{MRES}/patching/{{dataset}}/atp_vs_exact.csv", dataset=PATCH_DATASETS))
