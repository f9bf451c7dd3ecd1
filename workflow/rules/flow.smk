# Step: information-flow tracing of answer-writer pathways (study.md E9) and the context-abidance rift (E10).


FLOW_DATASETS = first_datasets("flow")
FLOW_TABLES = ["depth_maps.parquet", "depth_summary.csv", "sources.csv", "head_sources.parquet",
               "context_layers.csv", "head_context.parquet", "attention.parquet", "summary.json"]


rule trace_flow:
    """Trace answer-writer pathways (Stage I-III) on the clean inputs of the first flow.n_examples examples."""
    output:
        traces=f"{MRES}/flow/{{dataset}}/traces.jsonl",
        tables=[f"{MRES}/flow/{{dataset}}/{t}" for t in FLOW_TABLES],
    input:
        pairs=f"{MRES}/pairs/{{dataset}}.jsonl",
        generations=f"{MRES}/generations/{{dataset}}.jsonl",
        ranking=flow_ranking,
        script="scripts/trace_flow.py",
        code=src("flow", "models", "embedded", "generation", "stats"),
    params:
        settings=lambda w: settings("model", "flow"),
        ranking=lambda w, input: f"--ranking {input.ranking}" if input.ranking else "",
        outdir=lambda w: f"{MRES}/flow/{w.dataset}",
    log:
        logpath("trace_flow", "{dataset}"),
    threads: MODEL_THREADS
    resources:
        **model_resources(),
    wildcard_constraints:
        dataset="[A-Za-z0-9_\-]+",
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "python {input.script} --pairs {input.pairs} --generations {input.generations} {params.ranking}"
        " --settings {params.settings:q} --threads {threads} --outdir {params.outdir} > {log} 2>&1"


register_targets(expand(f"{MRES}/flow/{{dataset}}/summary.json", dataset=FLOW_DATASETS))
