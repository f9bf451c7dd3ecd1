# Step: knockout circuits (study.md E6/E7): mean-ablation knockout curves per subtask and ranking, operating points,
# overlap of the kept-head sets. Rankings (config circuits.rankings) whose table no rule produces are skipped (noted
# in the log).
_CIRC = config["circuits"]
_CDIR = f"{MRES}/circuits"


_CSRC, _CSKIP = circuit_rankings(_CIRC)


rule knockout_subtask:
    """Knockout curves of one subtask (held-out, in-sample, all-pairs scopes), operating points and kept heads
    per ranking, and the E7 isolation / cross-removal of its circuits: one job per subtask (the paper-scale
    knockout is hours of GPU time; a failed subtask reruns alone)."""
    output:
        curves=f"{_CDIR}/parts/subtask{{k}}/curves.parquet",
        ops=f"{_CDIR}/parts/subtask{{k}}/operating_points.csv",
        heads=f"{_CDIR}/parts/subtask{{k}}/heads.parquet",
        isolation=f"{_CDIR}/parts/subtask{{k}}/isolation.csv",
        cross=f"{_CDIR}/parts/subtask{{k}}/cross_removal.csv",
    input:
        clean=f"{MRES}/pairs/{_CIRC['dataset']}.jsonl",
        reference=f"{MRES}/pairs/{_CIRC['reference']}.jsonl",
        rankings=lambda w: circuit_ranking_files(_CSRC, int(w.k)),
        script="scripts/knockout.py",
        code=code_inputs("scripts/knockout.py"),
    params:
        settings=lambda w: settings("model", "circuits", "seed"),
        rankings=lambda w: " ".join(f"--ranking {shlex.quote(f'{n}={f}')}" for n, s in _CSRC.items()
                                    for f in ([s] if isinstance(s, str) else s)),
        skipped=lambda w: " ".join(f"--skipped {shlex.quote(n)}" for n in _CSKIP),
        outdir=lambda w, output: os.path.dirname(output.curves),
    log:
        logpath("knockout", "subtask{k}"),
    threads: MODEL_THREADS
    resources:
        **model_resources(weight=2.0),
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "python {input.script:q} --clean {input.clean:q} --reference {input.reference:q}"
        " {params.rankings} {params.skipped}"
        " --subtask {wildcards.k} --settings {params.settings:q} --threads {threads} --out-dir {params.outdir:q}"
        " > {log:q} 2>&1"


rule knockout:
    """The per-subtask knockout tables merged (ordered by subtask). The circuit of subtask k: heads.parquet rows
    with subtask == k, primary and kept."""
    output:
        curves=f"{_CDIR}/curves.parquet",
        ops=f"{_CDIR}/operating_points.csv",
        heads=f"{_CDIR}/heads.parquet",
        isolation=f"{_CDIR}/isolation.csv",
        cross=f"{_CDIR}/cross_removal.csv",
    input:
        parts=expand(f"{_CDIR}/parts/subtask{{k}}/curves.parquet", k=_CIRC["subtasks"]),
        script="scripts/knockout_merge.py",
        code=code_inputs("scripts/knockout_merge.py"),
    params:
        parts=lambda w, input: " ".join(f"--part {shlex.quote(os.path.dirname(p))}" for p in input.parts),
        outdir=lambda w, output: os.path.dirname(output.curves),
    log:
        logpath("knockout_merge"),
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "python {input.script:q} {params.parts} --out-dir {params.outdir:q} > {log:q} 2>&1"


rule overlap:
    """Overlap of the kept-head sets across subtasks and rankings (E7) and the knockout / overlap figures."""
    output:
        overlap=f"{_CDIR}/overlap.parquet",
        reuse=f"{_CDIR}/reuse.csv",
        figures=multiext(f"{_CDIR}/", *[f"{s}.{e}" for s in ("knockout_decision", "knockout_copy",
                                                            "knockout_induction", "overlap") for e in ("png", "pdf")]),
    input:
        rules.knockout.output,
        script="scripts/overlap.py",
        code=code_inputs("scripts/overlap.py"),
    params:
        settings=lambda w: settings("circuits"),
        outdir=lambda w, output: os.path.dirname(output.overlap),
    log:
        logpath("overlap"),
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "python {input.script:q} --dir {params.outdir:q} --settings {params.settings:q} > {log:q} 2>&1"


rule cross_subtask:
    """E7 across subtasks: every subtask's primary circuit isolated / removed (and the union / intersection of
    all), evaluated on each subtask's held-out evaluation split."""
    output:
        f"{_CDIR}/cross_subtask.csv",
    input:
        heads=rules.knockout.output.heads,
        clean=f"{MRES}/pairs/{_CIRC['dataset']}.jsonl",
        reference=f"{MRES}/pairs/{_CIRC['reference']}.jsonl",
        script="scripts/knockout.py",
        code=code_inputs("scripts/knockout.py"),
    params:
        settings=lambda w: settings("model", "circuits", "seed"),
        outdir=lambda w, output: os.path.dirname(output[0]),
    log:
        logpath("cross_subtask"),
    threads: MODEL_THREADS
    resources:
        **model_resources(weight=2.0),
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "python {input.script:q} --clean {input.clean:q} --reference {input.reference:q} --circuits {input.heads:q}"
        " --settings {params.settings:q} --threads {threads} --out-dir {params.outdir:q} > {log:q} 2>&1"


register_targets(rules.knockout.output, rules.overlap.output)
if _CIRC["cross_subtask"]:
    register_targets(rules.cross_subtask.output)
