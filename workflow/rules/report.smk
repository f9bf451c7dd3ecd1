# Step: paper-vs-run table + HTML summary (needs every other target), and a gallery that puts the figures drawn by
# other analyses' rules into the Snakemake report (`snakemake --report results/report.html`, `make report`).

_REP = f"{MRES}/report"
_UPSTREAM = [t for t in all_targets()]  # everything registered by the steps included before this one


def _other_figures():
    """name -> PNG path for every .png output of rules outside this step (only {dataset} wildcards expanded)."""
    mine = {"flow_figures", "horizon_figure", "report_gallery", "paper_table"}
    out = {}
    for r in workflow.rules:
        if r.name in mine:
            continue
        for f in r.output:
            f = str(f)
            if not f.endswith(".png"):
                continue
            names = set(re.findall(r"{(\w+)", f))
            if names <= {"dataset"}:
                for d in DATASETS if names else [None]:
                    p = re.sub(r"{dataset(,[^}]*)?}", d, f) if names else f
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
