# Step: horizon experiment (study.md E12) - how far a corrupted middle rule reaches, per patched layer and prefix.

HORIZON_DATASETS = first_datasets("horizon")


rule horizon:
    """Patch one layer's attention output with the corrupted-prompt run's; first divergence of the greedy CoT."""
    output:
        table=f"{MRES}/horizon/{{dataset}}/divergence.parquet",
        summary=f"{MRES}/horizon/{{dataset}}/horizon.csv",
        examples=f"{MRES}/horizon/{{dataset}}/examples.jsonl",
    input:
        generations=f"{MRES}/generations/{{dataset}}.jsonl",
        script="scripts/horizon.py",
        code=code_inputs("scripts/horizon.py"),
    params:
        settings=lambda w: settings("model", "horizon", "seed", "pairs"),
    log:
        logpath("horizon", "{dataset}"),
    threads: MODEL_THREADS
    resources:
        **model_resources(),
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "python {input.script:q} --generations {input.generations:q} --settings {params.settings:q} --threads {threads}"
        " --table {output.table:q} --summary {output.summary:q} --examples {output.examples:q} > {log:q} 2>&1"


register_targets(expand(f"{MRES}/horizon/{{dataset}}/horizon.csv", dataset=HORIZON_DATASETS))
