# Step 3: activations of every pair's clean input at the predicting position (activations contract).


rule extract_activations:
    """Residual stream, attention output, per-head z and attention rows at each pair's last position."""
    output:
        tensors=f"{MRES}/activations/{{dataset}}.safetensors",
        index=f"{MRES}/activations/{{dataset}}.parquet",
    input:
        pairs=f"{MRES}/pairs/{{dataset}}.jsonl",
        script="scripts/extract_activations.py",
        code=code_inputs("scripts/extract_activations.py"),
    params:
        settings=lambda w: settings("model", "activations"),
    log:
        logpath("extract_activations", "{dataset}"),
    threads: MODEL_THREADS
    resources:
        **model_resources(),
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "python {input.script:q} --pairs {input.pairs:q} --settings {params.settings:q} --threads {threads}"
        " --out {output.tensors:q} --index {output.index:q} > {log:q} 2>&1"


register_targets(expand(f"{MRES}/activations/{{dataset}}.safetensors", dataset=DATASETS))
