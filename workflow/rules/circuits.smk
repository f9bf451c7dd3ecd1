# Step: knockout circuits (study.md E6/E7): mean-ablation knockout curves per subtask and ranking, operating points,
# overlap of the kept-head sets. Rankings (config circuits.rankings) whose table no rule produces are skipped (noted
# in the log).
import shlex

_CIRC = config["circuits"]
_CDIR = f"{MRES}/circuits"


_CSRC, _CSKIP = circuit_rankings(_CIRC)


rule knockout_subtask:
    """Knockout curves of one subtask (held-out, in-sample, all-pairs scopes), operating points and kept heads
    per ranking: one job per subtask (the paper-scale knockout is hours of GPU time; a failed subtask reruns alone)."""
    output:
        curves=f"{_CDIR}/parts/subtask{{k}}/curves.parquet",
        ops=f"{_CDIR}/parts/subtask{{k}}/operating_points.csv",
        heads=f"{_CDIR}/parts/subtask{{k}}/heads.parquet",
    input:
        clean=f"{MRES}/pairs/{_CIRC['dataset']}.jsonl",
        reference=f"{MRES}/pairs/{_CIRC['reference']}.jsonl",
        rankings=lambda w: circuit_ranking_files(_CSRC, int(w.k)),
        script="scripts/knockout.py",
        code=src("circuits", "patching", "batching", "models", "embedded", "plotting", "stats"),
    params:
        settings=lambda w: settings("model", "circuits", "seed"),
        rankings=lambda w: " ".join(f"--ranking {shlex.quote(f'{n}={s}')}" for n, s in _CSRC.items()),
        skipped=lambda w: " ".join(f"--skipped {shlex.quote(n)}" for n in _CSKIP),
        outdir=lambda w, output: os.path.dirname(output.curves),
    wildcard_constraints:
        k=r"\d+",
    log:
        logpath("knockout", "subtask{k}"),
    threads: MODEL_THREADS
    resources:
        **model_resources(weight=2.0),
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "python {input.script} --clean {input.clean} --reference {input.reference} {params.rankings} {params.skipped}"
        " --subtask {wildcards.k} --settings {params.settings:q} --threads {threads} --out-dir {params.outdir}"
        " > {log} 2>&1"


rule knockout:
    """The per-subtask knockout tables merged (ordered by subtask)."""
    output:
        curves=f"{_CDIR}/curves.parquet",
        ops=f"{_CDIR}/operating_points.csv",
        heads=f"{_CDIR}/heads.parquet",
    input:
        parts=expand(f"{_CDIR}/parts/subtask{{k}}/curves.parquet", k=_CIRC["subtasks"]),
        script="scripts/knockout_merge.py",
        code=src("circuits", "stats"),
    params:
        parts=lambda w, input: " ".join(f"--part {shlex.quote(os.path.dirname(p))}" for p in input.parts),
        outdir=lambda w, output: os.path.dirname(output.curves),
    log:
        logpath("knockout_merge"),
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "python {input.script} {params.parts} --out-dir {params.outdir} > {log} 2>&1"


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
        code=src("circuits", "plotting", "stats"),
    params:
        settings=lambda w: settings("circuits.reuse_groups"),
        outdir=lambda w, output: os.path.dirname(output.overlap),
    log:
        logpath("overlap"),
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "python {input.script} --dir {params.outdir} --settings {params.settings:q} > {log} 2>&1"


register_targets(rules.knockout.output, rules.overlap.output)
