# Step: cross-analysis figures of study.md §7 from rule outputs (F-task, F-depth, F-source, F-rift, F-flow, F-attn,
# F-horizon); other analyses draw their own (F-patch, F-knock, F-overlap, F-probe, prior-shift curves).

_FIG = f"{MRES}/figures"
_FLOW_FIGS = ["task", "depth", "sources", "source_heads", "rift_heads", "attention"]
_N_TREES = int(config["figures"]["flow_trees"])
_FIG_CATEGORY = "Information flow (E9, E10)"


rule flow_figures:
    """F-task, F-depth, F-source, F-rift, F-attn and F-flow trees of one dataset's traces."""
    output:
        *[f for name in _FLOW_FIGS
          for f in png_pdf(f"{_FIG}/{{dataset}}/{name}", f"../report/{name}.rst", _FIG_CATEGORY, "{dataset}")],
        *[f for i in range(_N_TREES)
          for f in png_pdf(f"{_FIG}/{{dataset}}/flow_tree_{i}", "../report/flow_tree.rst", _FIG_CATEGORY,
                            "{dataset}")],
    input:
        traces=f"{MRES}/flow/{{dataset}}/traces.jsonl",
        tables=[f"{MRES}/flow/{{dataset}}/{t}" for t in FLOW_TABLES],
        pairs=f"{MRES}/pairs/{{dataset}}.jsonl",
        generations=f"{MRES}/generations/{{dataset}}.jsonl",
        script="scripts/make_figures.py",
        code=code_inputs("scripts/make_figures.py"),
    params:
        flowdir=lambda w: f"{MRES}/flow/{w.dataset}",
        outdir=lambda w: f"{_FIG}/{w.dataset}",
        trees=_N_TREES,
    log:
        logpath("flow_figures", "{dataset}"),
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "python {input.script:q} flow --flowdir {params.flowdir:q} --pairs {input.pairs:q}"
        " --generations {input.generations:q}"
        " --outdir {params.outdir:q} --trees {params.trees} > {log:q} 2>&1"


rule horizon_figure:
    """F-horizon: unchanged continuation and token agreement vs patched layer, one line per prefix length s."""
    output:
        *png_pdf(f"{_FIG}/{{dataset}}/horizon", "../report/horizon.rst", "Horizon (E12)", "{dataset}"),
    input:
        summary=f"{MRES}/horizon/{{dataset}}/horizon.csv",
        script="scripts/make_figures.py",
        code=code_inputs("scripts/make_figures.py"),
    params:
        stem=lambda w: f"{_FIG}/{w.dataset}/horizon",
    log:
        logpath("horizon_figure", "{dataset}"),
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "python {input.script:q} horizon --summary {input.summary:q} --out {params.stem:q} > {log:q} 2>&1"


# Every figure file is a target: an output nobody requires is never checked for being missing, so a new one (e.g.
# after raising figures.flow_trees) would not make its rule rerun.
register_targets(
    expand(f"{_FIG}/{{dataset}}/{{name}}.{{ext}}", dataset=FLOW_DATASETS, ext=["png", "pdf"],
           name=_FLOW_FIGS + [f"flow_tree_{i}" for i in range(_N_TREES)]),
    expand(f"{_FIG}/{{dataset}}/horizon.{{ext}}", dataset=HORIZON_DATASETS, ext=["png", "pdf"]),
)
