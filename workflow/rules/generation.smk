# Step 2: greedy CoT generation per dataset, accuracy table, clean/corrupt pairs (study.md §2.4, §4, E1).


rule generate_cot:
    """Greedy, batched, prefix-KV-cached CoT generation for every task record of one dataset."""
    output:
        records=f"{MRES}/generations/{{dataset}}.jsonl",
        accuracy=f"{MRES}/generations/{{dataset}}.accuracy.csv",
    input:
        tasks=f"{RESULTS}/tasks/{{dataset}}.jsonl",
        script="scripts/generate_cot.py",
        code=code_inputs("scripts/generate_cot.py"),
    params:
        settings=lambda w: settings("model", "prompt", "generation"),
    log:
        logpath("generate_cot", "{dataset}"),
    threads: MODEL_THREADS
    resources:
        **model_resources(),
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "python {input.script:q} --tasks {input.tasks:q} --dataset {wildcards.dataset} --settings {params.settings:q}"
        " --threads {threads} --out {output.records:q} --accuracy {output.accuracy:q} > {log:q} 2>&1"


rule run_info:
    """Provenance of this model's runs: resolved dtype and device, CPU/GPU model, library versions (summary page)."""
    output:
        f"{MRES}/run_info.json",
    input:
        script="scripts/run_info.py",
        code=code_inputs("scripts/run_info.py"),
    params:
        settings=lambda w: settings("model"),
    log:
        logpath("run_info"),
    resources:
        **model_resources(),
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "python {input.script:q} --settings {params.settings:q} --out {output:q} > {log:q} 2>&1"


rule accuracy:
    """One accuracy table over all datasets (rows of the per-dataset tables)."""
    output:
        f"{MRES}/accuracy.csv",
    input:
        tables=expand(f"{MRES}/generations/{{dataset}}.accuracy.csv", dataset=DATASETS),
        script="scripts/generate_cot.py",
        code=code_inputs("scripts/generate_cot.py"),
    log:
        logpath("accuracy"),
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "python {input.script:q} --aggregate {input.tables:q} --accuracy {output:q} > {log:q} 2>&1"


rule make_pairs:
    """Clean/corrupt input pairs for every subtask of every (correct) example of one dataset."""
    output:
        pairs=f"{MRES}/pairs/{{dataset}}.jsonl",
        rejected=f"{MRES}/pairs/{{dataset}}.rejected.csv",
    input:
        generations=f"{MRES}/generations/{{dataset}}.jsonl",
        script="scripts/make_pairs.py",
        code=code_inputs("scripts/make_pairs.py"),
    params:
        settings=lambda w: settings("model", "pairs", "seed"),
    log:
        logpath("make_pairs", "{dataset}"),
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "python {input.script:q} --generations {input.generations:q} --dataset {wildcards.dataset}"
        " --settings {params.settings:q} --out {output.pairs:q} --rejected {output.rejected:q} > {log:q} 2>&1"


register_targets(
    f"{MRES}/run_info.json",
    f"{MRES}/accuracy.csv",
    expand(f"{MRES}/pairs/{{dataset}}.jsonl", dataset=DATASETS),
)
