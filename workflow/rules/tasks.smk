# Step 1: PrOntoQA-style task creation (generator + verifier), one JSONL per dataset in config.yaml.


rule make_tasks:
    """Generate (or import) and verify the task examples of one dataset; only verified records are written."""
    output:
        f"{RESULTS}/tasks/{{dataset}}.jsonl",
    input:
        code=code_inputs("scripts/make_tasks.py"),
        script="scripts/make_tasks.py",
        data=task_import,
    params:
        settings=lambda w: settings("seed", datasets={w.dataset: config["datasets"][w.dataset]}),
    log:
        f"{RESULTS}/logs/tasks/{{dataset}}.log",
    threads: 1
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "python {input.script:q} --dataset {wildcards.dataset} --settings {params.settings:q} --out {output:q}"
        " > {log:q} 2>&1"


register_targets(expand(f"{RESULTS}/tasks/{{dataset}}.jsonl", dataset=DATASETS))
