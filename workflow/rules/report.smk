# Step: paper-vs-run table + HTML summary (needs every other target), and a gallery that puts the figures drawn by
# other analyses' rules into the Snakemake report (`snakemake --report results/report.html`, `make report`).

_REP = f"{MRES}/report"
_UPSTREAM = [t for t in all_targets()]  # everything registered by the steps included before this one


def _other_figures():
    """name -> PNG path for the .png outputs of other steps' rules that are part of the DAG: a rule's PNG (with its
    {dataset} wildcard filled in) is taken only when one of that rule's outputs, for the same dataset, is a
    registered target (so the gallery never adds jobs to the study)."""
    mine = {"flow_figures", "horizon_figure", "report_gallery", "paper_table"}
    targets = [str(t) for t in _UPSTREAM]
    out = {}
    for r in workflow.rules:
        if r.name in mine:
            continue
        outs = [str(f) for f in r.output]
        pngs = [f for f in outs if f.endswith(".png")]
        if not pngs or any(set(re.findall(r"{(\w+)", f)) - {"dataset"} for f in outs):
            continue
        for d in DATASETS:
            filled = [re.sub(r"{dataset(,[^}]*)?}", d, f) for f in outs]
            if not any(f in targets for f in filled):
                continue
            for f in pngs:
                p = re.sub(r"{dataset(,[^}]*)?}", d, f)
                key = p[len(MRES) + 1:] if p.startswith(MRES + "/") else p
                out[key.replace("/", "__")[:-4]] = p
    return out


_GALLERY = _other_figures()


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
        code=src("report", "generation") + ["src/cotmech/data/paper_numbers.yaml"],
    params:
        datasets=" ".join(list(dict.fromkeys(FLOW_DATASETS + DATASETS))),
        spec=config["model"]["spec"],
    log:
        logpath("paper_table"),
    shell:
        "{PY} {input.script} --mres {MRES} --datasets {params.datasets} --model-name {MODEL}"
        " --model-spec {params.spec:q} --csv {output.csv} --html {output.html} > {log} 2>&1"


register_targets(f"{_REP}/paper_vs_run.csv")
