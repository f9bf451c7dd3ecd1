# Step: layer-wise prior shift (logit + tuned lens, rift; study.md E10, C4) and head roles (E4, E5; C5).

_PS = f"{MRES}/prior_shift"
_ROLES_DATASETS = config["roles"]["datasets"] or DATASETS
_TUNED = config["tuned_lens"]["enabled"]


rule train_tuned_lens:
    """Per-layer affine translators (tuned lens) trained on the residual streams of every dataset's pairs."""
    output:
        tensors=f"{_PS}/tuned_lens.safetensors",
        report=f"{_PS}/tuned_lens.json",
    input:
        acts=expand(f"{MRES}/activations/{{dataset}}.safetensors", dataset=DATASETS),
        index=expand(f"{MRES}/activations/{{dataset}}.parquet", dataset=DATASETS),
        script="scripts/train_tuned_lens.py",
        code=src("lens", "models", "embedded"),
    params:
        settings=lambda w: settings("model", "tuned_lens", "seed"),
    log:
        logpath("train_tuned_lens"),
    threads: MODEL_THREADS
    resources:
        **model_resources(),
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "python {input.script} --activations {input.acts} --index {input.index} --settings {params.settings:q}"
        " --threads {threads} --out {output.tensors} --report {output.report} > {log} 2>&1"


rule prior_shift:
    """Logit-lens (and tuned-lens) curves of one dataset: answer probability/rank, context abidance, JS to the
    final and to the context-free prior, real-world answer (false ontology); bootstrap CIs."""
    output:
        table=f"{_PS}/{{dataset}}.parquet",
        rows=f"{_PS}/{{dataset}}.rows.parquet",
        png=f"{_PS}/{{dataset}}.png",
        pdf=f"{_PS}/{{dataset}}.pdf",
    input:
        pairs=f"{MRES}/pairs/{{dataset}}.jsonl",
        acts=f"{MRES}/activations/{{dataset}}.safetensors",
        index=f"{MRES}/activations/{{dataset}}.parquet",
        tuned=[f"{_PS}/tuned_lens.safetensors"] if _TUNED else [],
        script="scripts/prior_shift.py",
        code=src("lens", "prior_shift", "models", "embedded", "batching", "plotting", "vocab", "stats"),
    params:
        settings=lambda w: settings("model", "prior_shift", "seed"),
        tuned=lambda w, input: f"--tuned-lens {input.tuned[0]}" if input.tuned else "",
        stem=lambda w: f"{_PS}/{w.dataset}",
    log:
        logpath("prior_shift", "{dataset}"),
    threads: MODEL_THREADS
    resources:
        **model_resources(),
    wildcard_constraints:
        dataset="[A-Za-z0-9_\-]+",
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "python {input.script} dataset --pairs {input.pairs} --activations {input.acts} --index {input.index}"
        " {params.tuned} --dataset {wildcards.dataset} --settings {params.settings:q} --threads {threads}"
        " --table {output.table} --rows {output.rows} --figure {params.stem} > {log} 2>&1"


rule rift:
    """Rift layer (crossover of the in-context and prior divergences) with a bootstrap CI, over all datasets."""
    output:
        json=f"{_PS}/rift.json",
        png=f"{_PS}/rift.png",
        pdf=f"{_PS}/rift.pdf",
    input:
        rows=expand(f"{_PS}/{{dataset}}.rows.parquet", dataset=DATASETS),
        script="scripts/prior_shift.py",
        code=src("prior_shift", "plotting", "stats"),
    params:
        settings=lambda w: settings("prior_shift", "seed"),
        stem=lambda w, output: os.path.splitext(output.png)[0],
    log:
        logpath("rift"),
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "python {input.script} rift --rows {input.rows} --settings {params.settings:q} --out {output.json}"
        " --figure {params.stem} > {log} 2>&1"


rule head_roles:
    """Answer-writer (E4) and copy (E5) head scores of one dataset, merged over subtasks; top-k share in the
    second half next to the paper's 99.1%."""
    output:
        writers=f"{MRES}/roles/{{dataset}}/writers.parquet",
        copy_heads=f"{MRES}/roles/{{dataset}}/copy.parquet",
        summary=f"{MRES}/roles/{{dataset}}/summary.json",
        figures=multiext(f"{MRES}/roles/{{dataset}}/", "writers.png", "writers.pdf", "copy.png", "copy.pdf"),
    input:
        pairs=f"{MRES}/pairs/{{dataset}}.jsonl",
        acts=f"{MRES}/activations/{{dataset}}.safetensors",
        index=f"{MRES}/activations/{{dataset}}.parquet",
        script="scripts/head_roles.py",
        code=src("roles", "lens", "prior_shift", "models", "embedded", "plotting", "stats"),
    params:
        settings=lambda w: settings("model", "roles", "seed"),
        outdir=lambda w: f"{MRES}/roles/{w.dataset}",
    log:
        logpath("head_roles", "{dataset}"),
    threads: MODEL_THREADS
    resources:
        **model_resources(),
    wildcard_constraints:
        dataset="[A-Za-z0-9_\-]+",
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "python {input.script} --pairs {input.pairs} --activations {input.acts} --index {input.index}"
        " --settings {params.settings:q} --threads {threads} --outdir {params.outdir} > {log} 2>&1"


register_targets(
    f"{_PS}/rift.json",
    expand(f"{_PS}/{{dataset}}.parquet", dataset=DATASETS),
    expand(f"{MRES}/roles/{{dataset}}/summary.json", dataset=_ROLES_DATASETS),
)
