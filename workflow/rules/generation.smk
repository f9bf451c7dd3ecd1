# Step 2: greedy CoT generation per dataset, accuracy table, clean/corrupt pairs (study.md §2.4, §4, E1).


rule generate_cot:
    """Greedy, batched, prefix-KV-cached CoT generation for every task record of one dataset."""
    output:
        records=f"{MRES}/generations/{{dataset}}.jsonl",
        accuracy=f"{MRES}/generations/{{dataset}}.accuracy.csv",
    input:
        tasks=f"{RESULTS}/tasks/{{dataset}}.jsonl",
        script="scripts/generate_cot.py",
        code=src("generation", "models", "embedded", "batching", "prontoqa", "vocab", "stats"),
    params:
        settings=lambda w: settings("model", "prompt", "generation"),
    log:
        logpath("generate_cot", "{dataset}"),
    threads: MODEL_THREADS
    resources:
        **model_resources(),
    wildcard_constraints:
        dataset="[A-Za-z0-9_\-]+",
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "python {input.script} --tasks {input.tasks} --dataset {wildcards.dataset} --settings {params.settings:q}"
        " --threads {threads} --out {output.records} --accuracy {output.accuracy} > {log} 2>&1"


rule accuracy:
    """One accuracy table over all datasets (rows of the per-dataset tables)."""
    output:
        f"{MRES}/accuracy.csv",
    input:
        tables=expand(f"{MRES}/generations/{{dataset}}.accuracy.csv", dataset=DATASETS),
        script="scripts/generate_cot.py",
        code=src("generation", "stats"),
    log:
        logpath("accuracy"),
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "python {input.script} --aggregate {input.tables} --accuracy {output} > {log} 2>&1"


rule make_pairs:
    """Clean/corrupt input pairs for every subtask of every (correct) example of one dataset."""
    output:
        pairs=f"{MRES}/pairs/{{dataset}}.jsonl",
        rejected=f"{MRES}/pairs/{{dataset}}.rejected.csv",
    input:
        generations=f"{MRES}/generations/{{dataset}}.jsonl",
        script="scripts/make_pairs.py",
        code=src("pairs", "models", "embedded", "prontoqa", "vocab"),
    params:
        settings=lambda w: settings("model", "pairs", "seed"),
    log:
        logpath("make_pairs", "{dataset}"),
    wildcard_constraints:
        dataset="[A-Za-z0-9_\-]+",
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "python {input.script} --generations {input.generations} --dataset {wildcards.dataset}"
        " --settings {params.settings:q} --out {output.pairs} --rejected {output.rejected} > {log} 2>&1"


register_targets(
    f"{MRES}/accuracy.csv",
    expand(f"{MRES}/pairs/{{dataset}}.jsonl", dataset=DATASETS),
)
