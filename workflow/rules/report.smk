# Step: paper-vs-run table + HTML summary (needs every other target), and a gallery that puts the figures drawn by
# other analyses' rules into the Snakemake report (`snakemake --report results/report.html`, `make report`).

_REP = f"{MRES}/report"
_UPSTREAM = [t for t in all_targets()]  # everything registered by the steps included before this one


_GALLERY = other_figures(
    _UPSTREAM,
    exclude={"flow_figures", "horizon_figure", "report_gallery", "paper_table"},
)


rule report_gallery:
    """Copy a figure of another analysis into the report gallery (Snakemake report category "Analyses")."""
    output:
        report(f"{_REP}/gallery/{{name}}.png", caption="../report/gallery.rst", category="Analyses"),
    input:
        lambda w: _GALLERY[w.name],
    log:
        logpath("report_gallery", "{name}"),
    wildcard_constraints:
        name="|".join(re.escape(n) for n in _GALLERY) or "NONE",
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "cp {input} {output} > {log} 2>&1"


rule paper_table:
    """Paper-vs-run table of every headline number (results/<model>/report/paper_vs_run.csv) and summary.html."""
    output:
        csv=report(f"{_REP}/paper_vs_run.csv", caption="../report/paper_table.rst", category="Summary"),
        html=report(f"{_REP}/summary.html", caption="../report/summary.rst", category="Summary"),
    input:
        upstream=_UPSTREAM,
        gallery=expand(f"{_REP}/gallery/{{name}}.png", name=list(_GALLERY)),
        script="scripts/paper_table.py",
        code=src("report", "generation", "stats") + ["src/cotmech/data/paper_numbers.yaml"],
    params:
        datasets=" ".join(list(dict.fromkeys(FLOW_DATASETS + DATASETS))),
        spec=config["model"]["spec"],
        mres=lambda w, output: os.path.dirname(os.path.dirname(output.csv)),
        model_name=MODEL,
    log:
        logpath("paper_table"),
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "python {input.script} --mres {params.mres} --datasets {params.datasets} --model-name {params.model_name}"
        " --model-spec {params.spec:q} --csv {output.csv} --html {output.html} > {log} 2>&1"


register_targets(f"{_REP}/paper_vs_run.csv")
