# Step: layer-wise prior shift (logit + tuned lens, lens rift — our extension of E10, C4).

_PS = f"{MRES}/prior_shift"
_TUNED = config["tuned_lens"]["enabled"]


rule train_tuned_lens:
    """Per-layer affine translators (tuned lens) trained on the residual streams of every dataset's pairs."""
    output:
        tensors=f"{_PS}/tuned_lens.safetensors",
        report=f"{_PS}/tuned_lens.json",
    input:
        acts=expand(f"{MRES}/activations/{{dataset}}.safetensors", dataset=DATASETS),
        index=expand(f"{MRES}/activations/{{dataset}}.parquet", dataset=DATASETS),
        script="scripts/train_tuned_lens.py",
        code=code_inputs("scripts/train_tuned_lens.py"),
    params:
        settings=lambda w: settings("model", "tuned_lens", "seed"),
        datasets=" ".join(DATASETS),
    log:
        logpath("train_tuned_lens"),
    threads: MODEL_THREADS
    resources:
        **model_resources(),
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "python {input.script:q} --activations {input.acts:q} --index {input.index:q} --datasets {params.datasets}"
        " --settings {params.settings:q} --threads {threads} --out {output.tensors:q} --report {output.report:q}"
        " > {log:q} 2>&1"


rule prior_shift:
    """Logit-lens (and tuned-lens) curves of one dataset: answer probability/rank, context abidance, JS to the
    final and to the context-free prior, real-world answer (false ontology); bootstrap CIs."""
    output:
        table=f"{_PS}/{{dataset}}.parquet",
        rows=f"{_PS}/{{dataset}}.rows.parquet",
        png=f"{_PS}/{{dataset}}.png",
        pdf=f"{_PS}/{{dataset}}.pdf",
    input:
        pairs=f"{MRES}/pairs/{{dataset}}.jsonl",
        acts=f"{MRES}/activations/{{dataset}}.safetensors",
        index=f"{MRES}/activations/{{dataset}}.parquet",
        tuned=[f"{_PS}/tuned_lens.safetensors", f"{_PS}/tuned_lens.json"] if _TUNED else [],
        script="scripts/prior_shift.py",
        code=code_inputs("scripts/prior_shift.py"),
    params:
        settings=lambda w: settings("model", "prior_shift", "seed"),
        tuned=lambda w, input: (f"--tuned-lens {shlex.quote(input.tuned[0])}"
                                f" --tuned-report {shlex.quote(input.tuned[1])}" if input.tuned else ""),
        stem=lambda w: f"{_PS}/{w.dataset}",
    log:
        logpath("prior_shift", "{dataset}"),
    threads: MODEL_THREADS
    resources:
        **model_resources(),
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "python {input.script:q} dataset --pairs {input.pairs:q} --activations {input.acts:q} --index {input.index:q}"
        " {params.tuned} --dataset {wildcards.dataset} --settings {params.settings:q} --threads {threads}"
        " --table {output.table:q} --rows {output.rows:q} --figure {params.stem:q} > {log:q} 2>&1"


rule rift:
    """Lens rift (our extension: first layer where the lens prefers the in-context answer over the context-free
    prior's prediction in at least half of the pairs) with a bootstrap CI, over all datasets; the tuned lens on the
    examples held out from its training. The paper's rift statistic is the trace statistic (rule trace_flow)."""
    output:
        json=f"{_PS}/rift.json",
        png=f"{_PS}/rift.png",
        pdf=f"{_PS}/rift.pdf",
    input:
        rows=expand(f"{_PS}/{{dataset}}.rows.parquet", dataset=DATASETS),
        tuned_report=[f"{_PS}/tuned_lens.json"] if _TUNED else [],
        script="scripts/prior_shift.py",
        code=code_inputs("scripts/prior_shift.py"),
    params:
        settings=lambda w: settings("prior_shift", "seed"),
        tuned=lambda w, input: f"--tuned-report {shlex.quote(input.tuned_report[0])}" if input.tuned_report else "",
        stem=lambda w, output: os.path.splitext(output.png)[0],
    log:
        logpath("rift"),
    conda:
        "../../envs/cotmech.yaml"
    shell:
        "python {input.script:q} rift --rows {input.rows:q} {params.tuned} --settings {params.settings:q}"
        " --out {output.json:q} --figure {params.stem:q} > {log:q} 2>&1"


register_targets(
    f"{_PS}/rift.json",
    expand(f"{_PS}/{{dataset}}.parquet", dataset=DATASETS),
)
