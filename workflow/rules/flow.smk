# Step: information-flow tracing of answer-writer pathways (study.md E9) and the context-abidance rift (E10).
# Default (flow.pruned): each subtask's knockout circuit (circuits/heads.parquet) with the other heads mean-ablated,
# as the paper traced it; flow.pruned: false traces the unablated model.


FLOW_DATASETS = first_datasets("flow")
FLOW_TABLES = ["depth_maps.parquet", "depth_summary.csv", "sources.csv", "head_sources.parquet",
               "context_layers.csv", "head_context.parquet", "attention.parquet", "summary.json"]
_FLOW = config["flow"]
_FLOW_PRUNED = bool(_FLOW["pruned"])
if _FLOW_PRUNED:
    _made = circuit_rankings(config["circuits"])[0]
    if _FLOW["circuit_ranking"] not in _made:
        raise ValueError(f"config flow.circuit_ranking: {_FLOW['circuit_ranking']!r} is not a knockout ranking the "
                         f"circuits step produces ({sorted(_made)}); choose one or set flow.pruned: false")
    _missing = sorted(set(_FLOW["subtasks"] or []) - set(config["circuits"]["subtasks"]))
    if _missing:
        raise ValueError(f"config flow.subtasks: {_missing} have no knockout circuit (circuits.subtasks = "
                         f"{config['circuits']['subtasks']}); add them there or set flow.pruned: false")


rule trace_flow:
    """Trace answer-writer pathways (Stage I-III) on the clean inputs of the first flow.n_examples examples, in the
    pruned circuit of each subtask (default) or the unablated model."""
    output:
        traces=f"{MRES}/flow/{{dataset}}/traces.jsonl",
        tables=[f"{MRES}/flow/{{dataset}}/{t}" for t in FLOW_TABLES],
    input:
        pairs=f"{MRES}/pairs/{{dataset}}.jsonl",
        generations=f"{MRES}/generations/{{dataset}}.jsonl",
        ranking=[] if _FLOW_PRUNED else flow_ranking,
        circuit_heads=[f"{MRES}/circuits/heads.parquet"] if _FLOW_PRUNED else [],
        reference=[f"{MRES}/pairs/{config['circuits']['reference']}.jsonl"] if _FLOW_PRUNED else [],
        script="scripts/trace_flow.py",
        code=code_inputs("scripts/trace_flow.py"),
    params:
        settings=lambda w: settings("model", "flow", "seed", "circuits"),
        ranking=lambda w, input: f"--ranking {shlex.quote(input.ranking[0])}" if input.ranking else "",
        circuit=lambda w, input: (f"--circuit-heads {shlex.quote(input.circuit_heads[0])}"
                                  f" --reference {shlex.quote(input.reference[0])}" if input.circuit_heads else ""),
        outdir=lambda w: f"{MRES}/flow/{w.dataset}",
    log:
        logpath("trace_flow", "{dataset}"),
    threads: MODEL_THREADS
    resources:
        **model_resources(),
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "python {input.script:q} --pairs {input.pairs:q} --generations {input.generations:q} {params.ranking}"
        " {params.circuit} --settings {params.settings:q} --threads {threads} --outdir {params.outdir:q} > {log:q} 2>&1"


register_targets(expand(f"{MRES}/flow/{{dataset}}/summary.json", dataset=FLOW_DATASETS))
