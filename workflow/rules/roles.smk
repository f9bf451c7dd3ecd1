# Step: head roles, answer writers (E4) and copy heads (E5), per dataset (C5). Config section `roles`.

_ROLES_DATASETS = config["roles"]["datasets"] or DATASETS


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
        code=code_inputs("scripts/head_roles.py"),
    params:
        settings=lambda w: settings("model", "roles", "seed"),
        outdir=lambda w: f"{MRES}/roles/{w.dataset}",
    log:
        logpath("head_roles", "{dataset}"),
    threads: MODEL_THREADS
    resources:
        **model_resources(),
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "python {input.script:q} --pairs {input.pairs:q} --activations {input.acts:q} --index {input.index:q}"
        " --settings {params.settings:q} --threads {threads} --outdir {params.outdir:q} > {log:q} 2>&1"


register_targets(expand(f"{MRES}/roles/{{dataset}}/summary.json", dataset=_ROLES_DATASETS))
