# Step: probing for token mixing along ontology relations (study.md E8, claim C3). Needs no upstream output: the
# script generates its own original-style questions (quantifiers, relevant distractors) with cotmech.prontoqa.

_PDIR = f"{MRES}/probing"


rule probe:
    """Per-layer linear and MLP probes (real and control task) for every shot count; accuracy table and F-probe."""
    output:
        accuracy=f"{_PDIR}/accuracy.parquet",
        samples=f"{_PDIR}/samples.parquet",
        figure=multiext(f"{_PDIR}/accuracy", ".png", ".pdf"),
    input:
        script="scripts/probe.py",
        code=src("probing", "circuits", "prontoqa", "vocab", "batching", "models", "embedded", "plotting", "stats"),
    params:
        settings=lambda w: settings("model", "probing", "seed"),
        outdir=lambda w, output: os.path.dirname(output.accuracy),
    log:
        logpath("probe"),
    threads: MODEL_THREADS
    resources:
        **model_resources(),
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "python {input.script} --settings {params.settings:q} --threads {threads} --out-dir {params.outdir} > {log} 2>&1"


register_targets(rules.probe.output)
