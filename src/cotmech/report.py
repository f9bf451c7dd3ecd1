"""Paper-vs-run table and HTML summary (study.md §1.4 and the E-sections).

Reference values live in ``cotmech/data/paper_numbers.yaml`` (each with its study.md section and evidence tag, the
claim C1–C6 of study.md §1.3 it bears on, and whether our row is the *same* quantity as the paper's, our
*extension*, or a *different* quantity). Our values are read from result files under ``results/<model>/`` (paths
relative to it: :data:`RESULT_FILES`, the layout the workflow's rules write) by the reader named in each entry; a row
whose result file is absent says "not run". Each row gets a verdict from its CI (:func:`row_verdict`) and each claim
one from its same-quantity rows (:func:`claim_verdicts`). Nothing here is a result literal.
"""
from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .io import number

PAPER_NUMBERS = Path(__file__).with_name("data") / "paper_numbers.yaml"
COLUMNS = ["id", "claim_id", "claim", "section", "tag", "comparison", "paper", "ours", "ci_low", "ci_high", "n",
           "status", "verdict", "source", "note", "model"]
NOT_RUN = "not run"
#: What a row's value is, next to the paper's.
COMPARISONS = {"same": "the paper's quantity", "extension": "our extension (no paper counterpart; paper value for "
               "orientation only)", "different": "a different quantity from the paper's (not comparable)"}
#: Claims of study.md §1.3 (C1–C6); "-" = a row that is context, not evidence for a claim.
CLAIMS = {"C1": "CoT generation splits into decision, copy and induction subtasks",
          "C2": "a circuit of roughly 400-550 of 1,024 heads keeps ~90% next-token agreement",
          "C3": "token mixing along ontology relations peaks around the middle layers",
          "C4": "functional rift at the middle (block 16 of 32): prior before, context after",
          "C5": "answer writers in the second half, ontology movers in the first",
          "C6": "parallel answer pathways from question, generated CoT and few-shot exemplars"}
AGREES, DIFFERS, INCONCLUSIVE = "agrees within the CI", "differs", "inconclusive at this n"
NO_VALUE, NOT_COMPARED = "no value", "not compared"
#: Fewest independent units (examples; the row's ``n``) for a verdict: a percentile bootstrap over fewer clusters
#: has almost no distinct resamples (one example gives a zero-width interval), so such rows are inconclusive.
MIN_N = 5
#: Default half-width (on the row's scale: shares and relative depths in [0, 1]) below which a CI that contains the
#: paper's value counts as agreement; a wider CI is inconclusive. An entry's ``tolerance`` overrides it.
TOLERANCE = 0.1
#: Result files the readers take, relative to ``results/<model>/`` — the paths the workflow's rules write
#: ({dataset}: the first of the table's datasets that has the file).
RESULT_FILES = {
    "accuracy": "accuracy.csv",
    "rift": "prior_shift/rift.json",
    "flow_summary": "flow/{dataset}/summary.json",
    "flow_depth": "flow/{dataset}/depth_summary.csv",
    "flow_sources": "flow/{dataset}/sources.csv",
    "roles": "roles/{dataset}/summary.json",
    "probing": "probing/accuracy.parquet",
    "probing_selected": "probing/selected.csv",
    "knockout": "circuits/operating_points.csv",
    "horizon": "horizon/{dataset}/horizon.csv",
}


def load_paper_numbers(path: str | Path = PAPER_NUMBERS) -> list[dict]:
    """The reference entries; each needs id, claim, paper, tag (P/S/C/R), section, reader, claim_id (C1–C6 or "-")
    and comparison (same / extension / different)."""
    import yaml

    with open(path, encoding="utf-8") as f:
        entries = yaml.safe_load(f)
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of entries")
    for i, e in enumerate(entries):
        for key in ("id", "claim", "paper", "tag", "section", "reader", "claim_id", "comparison"):
            if key not in e:
                raise ValueError(f"{path}: entry {i} ({e.get('id', '?')}): missing {key!r}")
        if e["comparison"] not in COMPARISONS:
            raise ValueError(f"{path}: entry {e['id']}: comparison {e['comparison']!r} not one of {list(COMPARISONS)}")
        if e["claim_id"] != "-" and e["claim_id"] not in CLAIMS:
            raise ValueError(f"{path}: entry {e['id']}: claim_id {e['claim_id']!r} not one of {list(CLAIMS)} or '-'")
        if e["tag"] not in ("P", "S", "C", "R", "G", "I"):
            raise ValueError(f"{path}: entry {e['id']}: unknown evidence tag {e['tag']!r}")
        if e["reader"] not in READERS:
            raise ValueError(f"{path}: entry {e['id']}: unknown reader {e['reader']!r}; known: {sorted(READERS)}")
    return entries


# --------------------------------------------------------------------------------------------------
# Readers: (mres, datasets, **args) -> {"ours", "ci_low", "ci_high", "n", "source", "note"} or None (not run)
# --------------------------------------------------------------------------------------------------
def _first(mres: Path, datasets: Sequence[str], rel: str) -> tuple[Path, str] | None:
    for d in datasets:
        p = mres / rel.format(dataset=d)
        if p.exists():
            return p, d
    return None


def _rel(p: Path, mres: Path) -> str:
    try:
        return str(p.relative_to(mres.parent))
    except ValueError:
        return str(p)


def read_accuracy(mres: Path, datasets: Sequence[str], ontology: str) -> dict | None:
    from .generation import ACCURACY_DTYPES
    from .stats import wilson
    from .io import read_table

    p = mres / RESULT_FILES["accuracy"]
    if not p.exists():
        return None
    df = read_table(p, dtype=ACCURACY_DTYPES)
    sub = df[df["ontology"].str.lower() == str(ontology).lower()]  # tables written before the fix say "False"
    if sub.empty:
        return None
    k, n = int(sub["correct"].sum()), int(sub["n"].sum())
    lo, hi = wilson(k, n)
    return {"ours": k / n if n else None, "ci_low": lo, "ci_high": hi, "n": n, "source": _rel(p, mres),
            "note": f"{k}/{n} exact; datasets {', '.join(map(str, sub['dataset']))}; Wilson 95% CI"}


def _rift_lens(mres: Path, lens: str) -> tuple[dict, dict, Path] | None:
    """rift.json, its all-datasets entry for ``lens`` and its path; None if either is absent."""
    from .io import read_json

    p = mres / RESULT_FILES["rift"]
    if not p.exists():
        return None
    d = read_json(p)
    v = d.get("datasets", {}).get("all", {}).get(lens)
    return (d, v, p) if v else None


def read_rift_layer(mres: Path, datasets: Sequence[str], lens: str) -> dict | None:
    r = _rift_lens(mres, lens)
    if r is None:
        return None
    d, v, p = r
    L = v.get("n_layers") or d.get("n_layers")
    return {"ours": number(v.get("rel_depth")), "ci_low": number(v.get("rel_ci_low")),
            "ci_high": number(v.get("rel_ci_high")),
            "n": v.get("n_examples"), "source": _rel(p, mres),
            "note": f"layer {v.get('rift_layer')} of {L} ({lens} lens): first layer where the lens prefers the "
                    "in-context answer over the context-free prior's prediction in >= half the pairs (our extension)"
                    "; bootstrap CI over examples"}


def read_lens_context(mres: Path, datasets: Sequence[str], side: str, lens: str = "logit") -> dict | None:
    r = _rift_lens(mres, lens)
    if r is None:
        return None
    _, v, p = r
    s = v.get("context_abidance_rift", {}).get(side, {})
    return {"ours": number(s.get("mean")), "ci_low": number(s.get("ci_low")), "ci_high": number(s.get("ci_high")),
            "n": v.get("n_pairs"), "source": _rel(p, mres),
            "note": f"{lens} lens top-1 in prompt, split at the lens rift layer {v.get('rift_layer')} (extension)"}


def _flow_summary(mres: Path, datasets: Sequence[str]) -> tuple[dict, Path, str] | None:
    from .io import read_json

    hit = _first(mres, datasets, RESULT_FILES["flow_summary"])
    return None if hit is None else (read_json(hit[0]), hit[0], hit[1])


def _flow_state(s: dict) -> dict:
    """An unpruned trace is not the paper's model state (E9): such rows are a different quantity."""
    if s.get("pruned") is False:
        return {"comparison": "different", "state": "unpruned model (paper: pruned circuit)"}
    return {"state": "pruned circuit" if s.get("pruned") else "model state not recorded"}


def read_flow_context(mres: Path, datasets: Sequence[str], key: str) -> dict | None:
    r = _flow_summary(mres, datasets)
    if r is None:
        return None
    s, p, d = r
    v = s.get(key, {})
    st = _flow_state(s)
    return {"ours": number(v.get("share")), "ci_low": number(v.get("ci_low")), "ci_high": number(v.get("ci_high")),
            "n": s.get("n_examples"), "source": _rel(p, mres), **{k: st[k] for k in st if k == "comparison"},
            "note": f"{d}: {st['state']}, {s.get('n_examples')} examples, {v.get('n')} traced entries, split layer "
                    f"{s.get('split_layer')} of {s.get('n_layers')}; cluster-bootstrap CI over examples"}


def read_flow_crossing(mres: Path, datasets: Sequence[str]) -> dict | None:
    r = _flow_summary(mres, datasets)
    if r is None:
        return None
    s, p, d = r
    c = s.get("crossing")
    if not isinstance(c, dict):
        return {"ours": None, "source": _rel(p, mres), "note": f"{d}: summary without a crossing (older trace)"}
    st = _flow_state(s)
    return {"ours": number(c.get("rel_depth")), "ci_low": number(c.get("rel_ci_low")),
            "ci_high": number(c.get("rel_ci_high")),
            "n": s.get("n_examples"), "source": _rel(p, mres), **{k: st[k] for k in st if k == "comparison"},
            "note": f"{d}: {st['state']}; layer {c.get('layer')} of {s.get('n_layers')} (first layer whose context "
                    f"share is >= {c.get('level')}); {c.get('n_boot_no_crossing')} resamples without a crossing"}


def read_flow_writers(mres: Path, datasets: Sequence[str]) -> dict | None:
    r = _flow_summary(mres, datasets)
    if r is None:
        return None
    s, p, d = r
    w = s.get("writers", {})
    st = _flow_state(s)
    return {"ours": number(w.get("share_second_half")), "ci_low": number(w.get("ci_low")),
            "ci_high": number(w.get("ci_high")), "n": s.get("n_examples"), "source": _rel(p, mres),
            **{k: st[k] for k in st if k == "comparison"},
            "note": f"{d}: {st['state']}; {w.get('n')} depth-0 entries, layers >= {s.get('split_layer')}; "
                    "cluster-bootstrap CI over examples"}


def _read_row(mres: Path, datasets: Sequence[str], rel: str, select: Callable[[Any], Any], missing: str,
              entry: Callable[[Any, str], dict]) -> dict | None:
    """Reader over the first row of table ``rel`` (of the first dataset that has it) that ``select(df)`` keeps:
    ``entry(row, dataset)`` with its source; "no value" noting ``missing`` if no row is kept; None without the table."""
    from .io import read_table

    hit = _first(mres, datasets, rel)
    if hit is None:
        return None
    p, d = hit
    df = read_table(p)
    rows = df[select(df)]
    if rows.empty:
        return {"ours": None, "source": _rel(p, mres), "note": f"{d}: {missing}"}
    return {**entry(rows.iloc[0], d), "source": _rel(p, mres)}


def _with_flow_state(res: dict | None, mres: Path, datasets: Sequence[str]) -> dict | None:
    """A flow-table row with ``n`` = the traced examples (the independent unit), marked a different quantity when
    the trace ran unpruned (see :func:`_flow_state`)."""
    r = _flow_summary(mres, datasets)
    if res is None or r is None:
        return res
    st = _flow_state(r[0])
    return {**res, **({"comparison": st["comparison"]} if "comparison" in st else {}),
            "n": r[0].get("n_examples"),  # the independent unit of the traces
            "note": f"{res.get('note', '')} ({st['state']}, {r[0].get('n_examples')} examples)"}


def read_flow_depth(mres: Path, datasets: Sequence[str], depth: int, col: str) -> dict | None:
    def entry(r: Any, d: str) -> dict:
        ci = (r["ci_low"], r["ci_high"]) if col == "share_second_half" else (None, None)
        return {"ours": number(r[col]), "ci_low": number(ci[0]), "ci_high": number(ci[1]), "n": int(r["n"]),
                "note": f"{d}: mean layer {r['mean_layer']:.2f}, {int(r['n'])} traced entries (Wilson CI over "
                        "entries, not independent)"}

    return _with_flow_state(_read_row(mres, datasets, RESULT_FILES["flow_depth"], lambda df: df["depth"] == depth,
                                      f"no traced heads at depth {depth}", entry), mres, datasets)


def read_flow_source(mres: Path, datasets: Sequence[str], subtask: int, part: str) -> dict | None:
    from .stats import wilson

    def entry(r: Any, d: str) -> dict:
        n = int(r["n"])
        lo, hi = wilson(int(round(float(r[part]) * n)), n)
        return {"ours": number(r[part]), "ci_low": lo, "ci_high": hi, "n": n,
                "note": f"{d}: read positions of depth-0 writers; Wilson CI (positions not independent)"}

    return _with_flow_state(_read_row(mres, datasets, RESULT_FILES["flow_sources"],
                                      lambda df: df["subtask"] == subtask, f"subtask {subtask} not traced", entry),
                            mres, datasets)


def read_roles_share(mres: Path, datasets: Sequence[str], kind: str) -> dict | None:
    from .io import read_json

    hit = _first(mres, datasets, RESULT_FILES["roles"])
    if hit is None:
        return None
    s = read_json(hit[0])
    v = s.get(kind, {})
    return {"ours": number(v.get("share_second_half")), "ci_low": number(v.get("ci_low")),
            "ci_high": number(v.get("ci_high")), "n": s.get("n_examples"), "source": _rel(hit[0], mres),
            "note": f"{hit[1]}: top-{s.get('k')} heads; bootstrap CI over examples"}


def read_probe_peak(mres: Path, datasets: Sequence[str], col: str) -> dict | None:
    """E8: test accuracy at the layer chosen on validation data (probing/selected.csv; the MLP probe, the shot
    count with the best validation accuracy), with the word-type-only baseline and the biased test maximum in
    the note. Older runs without selected.csv: the maximum of test accuracy over layers, noted as biased."""
    from .io import read_table

    sel = mres / RESULT_FILES["probing_selected"]
    if sel.exists():
        df = read_table(sel)
        if (df["probe"] == "mlp").any():
            df = df[df["probe"] == "mlp"]
        if df.empty:
            return None
        r = df.iloc[int(df["val_acc"].to_numpy().argmax())]
        max_layer = int(r["n_layers"])
        note = (f"{r['probe']}, {int(r['shots'])}-shot, layer {int(r['layer'])} of {max_layer} chosen on validation "
                f"questions (novel words); control task {float(r['control_acc']):.2f}; word type only "
                f"{float(r.get('type_acc', float('nan'))):.2f}; max over layers of test acc (biased) "
                f"{float(r['test_max']):.2f} at layer {int(r['test_max_layer'])}")
        source = _rel(sel, mres)
        if col == "acc":
            return {"ours": number(r["acc"]), "ci_low": number(r["ci_low"]), "ci_high": number(r["ci_high"]),
                    "n": number(r["n_test"]), "source": source, "note": note}
        return {"ours": int(r["layer"]) / max_layer if max_layer else None, "source": source, "note": note}
    p = mres / RESULT_FILES["probing"]
    if not p.exists():
        return None
    df = read_table(p)
    if "task" in df.columns:
        df = df[df["task"] == "real"]
    if "probe" in df.columns and (df["probe"] == "mlp").any():
        df = df[df["probe"] == "mlp"]
    if df.empty:
        return None
    r = df.loc[df["acc"].idxmax()]
    max_layer = int(df["layer"].max())
    shots = f", {int(r['shots'])}-shot" if "shots" in df.columns else ""
    note = f"peak at layer {int(r['layer'])} of {max_layer}{shots} (max of test accuracy: biased upward)"
    if col == "acc":
        return {"ours": number(r["acc"]), "ci_low": number(r.get("ci_low")), "ci_high": number(r.get("ci_high")),
                "n": number(r.get("n")), "source": _rel(p, mres), "note": note}
    return {"ours": int(r["layer"]) / max_layer if max_layer else None, "source": _rel(p, mres), "note": note}


def read_knockout(mres: Path, datasets: Sequence[str], col: str) -> dict | None:
    """Mean over subtasks of the operating points of each subtask's circuit: the ``primary`` rows of
    operating_points.csv (the primary ranking at its held-out scope, E6); for tables without that column the
    induction ranking, one scope per subtask (the first present of rank_split, other_data, all_pairs, eval_split).
    The interval is the min–max over subtasks, not a CI."""
    from .io import read_table

    p = mres / RESULT_FILES["knockout"]
    if not p.exists():
        return None
    df = read_table(p)
    if df.empty:
        return None
    if "primary" in df.columns and df["primary"].astype(bool).any():
        df = df[df["primary"].astype(bool)]
    elif "ranking" in df.columns and (df["ranking"].astype(str) == "induction").any():
        df = df[df["ranking"].astype(str) == "induction"]
    if "scope" in df.columns:
        order = {"rank_split": 0, "other_data": 1, "all_pairs": 2, "eval_split": 3}
        df = (df.assign(_o=df["scope"].map(order).fillna(9)).sort_values(["subtask", "ranking", "_o"], kind="stable")
              .drop_duplicates(["subtask", "ranking"]))
    rankings = ", ".join(sorted(set(map(str, df.get("ranking", [])))))
    scopes = ", ".join(sorted(set(map(str, df.get("scope", [])))))
    vals = (df["n_kept"] / (df["n_kept"] + df["n_removed"])) if col == "kept_share" else df["acc"]
    return {"ours": float(vals.mean()), "ci_low": float(vals.min()), "ci_high": float(vals.max()),
            "n": int(len(df)), "source": _rel(p, mres), "ci_is_range": True,
            "note": f"mean over {len(df)} subtasks' operating points (ranking {rankings}; scope {scopes}); "
                    "interval = min-max over subtasks, not a CI"}


def read_horizon(mres: Path, datasets: Sequence[str], layer: int, s: int) -> dict | None:
    def entry(r: Any, d: str) -> dict:
        return {"ours": number(r["exact"]), "ci_low": number(r["exact_ci_low"]), "ci_high": number(r["exact_ci_high"]),
                "n": int(r["n"]), "note": f"{d}: exact continuation; mean token agreement {float(r['agree']):.3f}"}

    return _read_row(mres, datasets, RESULT_FILES["horizon"],
                     lambda df: (df["layer"] == layer) & (df["s"] == s), f"layer {layer}, s={s} not in the table",
                     entry)


READERS: dict[str, Callable[..., dict | None]] = {
    "accuracy": read_accuracy, "rift_layer": read_rift_layer, "lens_context": read_lens_context,
    "flow_context": read_flow_context, "flow_crossing": read_flow_crossing, "flow_writers": read_flow_writers,
    "flow_depth": read_flow_depth,
    "flow_source": read_flow_source, "roles_share": read_roles_share, "probe_peak": read_probe_peak,
    "knockout": read_knockout, "horizon": read_horizon,
}


# --------------------------------------------------------------------------------------------------
# Table and HTML
# --------------------------------------------------------------------------------------------------
def row_verdict(paper: Any, ours: Any, ci_low: Any, ci_high: Any, tolerance: float = TOLERANCE,
                ci_is_range: bool = False, n: Any = None) -> str:
    """Verdict of one row from its interval: the paper's value outside [ci_low, ci_high] -> :data:`DIFFERS`; inside
    with a half-width <= ``tolerance`` -> :data:`AGREES`; inside a wider interval, no interval (or only a range that
    is not a CI, ``ci_is_range``), or fewer than :data:`MIN_N` independent units ``n`` -> :data:`INCONCLUSIVE`; no
    value of ours -> :data:`NO_VALUE`."""
    p, o, lo, hi, m = number(paper), number(ours), number(ci_low), number(ci_high), number(n)
    if o is None:
        return NO_VALUE
    if p is None or lo is None or hi is None or ci_is_range or (m is not None and m < MIN_N):
        return INCONCLUSIVE
    if p < lo or p > hi:
        return DIFFERS
    return AGREES if (hi - lo) / 2 <= tolerance else INCONCLUSIVE


def paper_vs_run(mres: str | Path, datasets: Sequence[str], model: str, entries: list[dict] | None = None) -> Any:
    """One row per reference entry: the paper's value and ours (with CI) read from ``mres``, or "not run"; the
    comparison kind (the entry's, or "different" when the reader finds a different model state) and the row's
    verdict (:func:`row_verdict` for "same" rows, :data:`NOT_COMPARED` for the others)."""
    import pandas as pd

    mres = Path(mres)
    entries = load_paper_numbers() if entries is None else entries
    rows = []
    for e in entries:
        try:
            got = READERS[e["reader"]](mres, list(datasets), **(e.get("args") or {}))
        except (KeyError, ValueError, json.JSONDecodeError) as err:
            got = {"ours": None, "note": f"unreadable result file: {err}"}
        base = {c: None for c in COLUMNS} | {k: e[k] for k in ("id", "claim_id", "claim", "section", "tag",
                                                                "comparison", "paper")}
        base["model"] = model
        if got is None:
            base["status"] = NOT_RUN
            base["verdict"] = NOT_RUN
        else:
            base.update({k: got.get(k) for k in ("ours", "ci_low", "ci_high", "n", "source", "note")})
            base["comparison"] = got.get("comparison", e["comparison"])
            base["status"] = "ok" if got.get("ours") is not None else NO_VALUE
            base["verdict"] = (row_verdict(e["paper"], got.get("ours"), got.get("ci_low"), got.get("ci_high"),
                                           float(e.get("tolerance", TOLERANCE)), bool(got.get("ci_is_range")),
                                           got.get("n"))
                               if base["comparison"] == "same" else NOT_COMPARED)
        rows.append(base)
    return pd.DataFrame(rows, columns=COLUMNS)


def claim_verdicts(table: Any) -> Any:
    """One row per claim C1–C6 from the table's *same-quantity* rows with a value: :data:`DIFFERS` if any of them
    differs, :data:`AGREES` if every one agrees, else :data:`INCONCLUSIVE`; "not assessed" without such rows
    (extension and different-quantity rows never decide a claim)."""
    import pandas as pd

    out = []
    for cid, text in CLAIMS.items():
        rows = table[(table["claim_id"] == cid) & (table["comparison"] == "same") & (table["status"] == "ok")]
        v = rows["verdict"].tolist()
        if not v:
            verdict = "not assessed"
        elif DIFFERS in v:
            verdict = DIFFERS
        elif all(x == AGREES for x in v):
            verdict = AGREES
        else:
            verdict = INCONCLUSIVE
        ids = {k: ", ".join(rows.loc[rows["verdict"] == k, "id"]) for k in (AGREES, DIFFERS, INCONCLUSIVE)}
        others = table[(table["claim_id"] == cid) & (table["comparison"] != "same")]
        out.append({"claim_id": cid, "claim": text, "verdict": verdict, "n_rows": len(v),
                    "n_agree": v.count(AGREES), "n_differ": v.count(DIFFERS), "n_inconclusive": v.count(INCONCLUSIVE),
                    "agree": ids[AGREES], "differ": ids[DIFFERS], "inconclusive": ids[INCONCLUSIVE],
                    "not_counted": ", ".join(f"{r.id} ({r.comparison})" for r in others.itertuples())})
    return pd.DataFrame(out)


def _fmt(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if isinstance(x, float):
        return f"{x:.3f}"
    return html.escape(str(x))


def _fmt_n(x: Any) -> str:
    v = number(x)
    return "" if v is None else (str(int(v)) if float(v).is_integer() else f"{v:.1f}")


def summary_html(table: Any, model_name: str, model_spec: str, figures: Sequence[str] = (),
                 claims: Any = None) -> str:
    """A self-contained HTML page: the claim verdicts, the paper-vs-run table (status coloured) and links to the
    figures."""
    n_ok = int((table["status"] == "ok").sum())
    head = ("<tr><th>claim</th><th>row</th><th>section</th><th>tag</th><th>quantity</th><th>paper</th><th>ours</th>"
            "<th>95% CI / range</th><th>n</th><th>verdict</th><th>note</th><th>source</th></tr>")
    body = []
    for r in table.itertuples(index=False):
        ci = f"[{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]" if _fmt(r.ci_low) else ""
        ours = _fmt(r.ours) if r.status == "ok" else f"<i>{html.escape(str(r.status))}</i>"
        body.append(f'<tr class="{html.escape(str(r.status)).replace(" ", "-")}"><td>{_fmt(r.claim_id)}</td>'
                    f"<td>{_fmt(r.claim)}</td><td>{_fmt(r.section)}</td><td>[{_fmt(r.tag)}]</td>"
                    f"<td>{_fmt(r.comparison)}</td><td>{_fmt(r.paper)}</td><td>{ours}</td><td>{ci}</td>"
                    f"<td>{_fmt_n(r.n)}</td><td>{_fmt(r.verdict) if r.comparison == 'same' else ''}</td>"
                    f"<td>{_fmt(r.note)}</td><td><code>{_fmt(r.source)}</code></td></tr>")
    claims = claim_verdicts(table) if claims is None else claims
    crows = "".join(f"<tr><td>{_fmt(c.claim_id)}</td><td>{_fmt(c.claim)}</td><td><b>{_fmt(c.verdict)}</b></td>"
                    f"<td>{_fmt(c.agree)}</td><td>{_fmt(c.differ)}</td><td>{_fmt(c.inconclusive)}</td></tr>"
                    for c in claims.itertuples(index=False))
    kinds = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in COMPARISONS.items())
    figs = "".join(f'<li><a href="{html.escape(f)}">{html.escape(f)}</a></li>' for f in figures)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cotmech: paper vs run ({html.escape(model_name)})</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; font-size: 13px; }}
table {{ border-collapse: collapse; width: 100%; }} th, td {{ border: 1px solid #ccc; padding: 3px 6px; }}
th {{ background: #eee; position: sticky; top: 0; }} tr.not-run td {{ color: #999; }}
tr.ok td:nth-child(7) {{ font-weight: bold; }} code {{ font-size: 11px; }}
</style></head><body>
<h1>How to think step-by-step: paper vs this run</h1>
<p>Model: <b>{html.escape(model_name)}</b> (<code>{html.escape(model_spec)}</code>). Paper: Llama-2-7B (32 layers).
Layer positions are compared as relative depth (layer / number of layers). Evidence tags (study.md §0):
[P] paper, [S] secondary write-up, [C] official code/data, [R] computed from the shipped result files.
Paper values are reference values from <code>cotmech/data/paper_numbers.yaml</code>; ours are read from the result
files named in the last column. {n_ok} of {len(table)} rows have a value; "not run" = the result file is absent.</p>
<h2>Claims (study.md §1.3)</h2>
<p>A row agrees when the paper's value lies in our CI and the CI's half-width is at most {TOLERANCE} (an entry may set
its own tolerance); it differs when the paper's value lies outside; otherwise it is inconclusive at this n. A claim
takes its verdict from its same-quantity rows only: differs if any differs, agrees if all agree.</p>
<table><tr><th>claim</th><th></th><th>verdict</th><th>rows that agree</th><th>differ</th><th>inconclusive</th></tr>
{crows}</table>
<h2>Rows</h2><p>Quantity:</p><ul>{kinds}</ul>
<table>{head}{''.join(body)}</table>
<h2>Figures</h2><ul>{figs}</ul>
</body></html>
"""


# --------------------------------------------------------------------------------------------------
# Provenance section (results/<model>/run_info.json, cotmech.provenance)
# --------------------------------------------------------------------------------------------------
def read_run_info(mres: str | Path) -> dict | None:
    """``results/<model>/run_info.json`` or ``None`` if absent; a broken file raises naming it."""
    p = Path(mres) / "run_info.json"
    if not p.exists():
        return None
    try:
        info = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON: {e}") from e
    if not isinstance(info, dict):
        raise ValueError(f"{p}: expected a JSON object")
    return info


def provenance_html(info: dict | None) -> str:
    """An HTML section listing dtype, device, CPU/GPU and library versions of the run (or saying it is absent)."""
    if info is None:
        return "<h2>Run</h2><p><i>run_info.json absent: dtype, device and versions not recorded</i></p>\n"
    rows = [("dtype", f"{info.get('dtype')} (requested {info.get('dtype_requested')})"),
            ("device", info.get("device")), ("CPU", f"{info.get('cpu')} ({info.get('cpu_count')} logical cores, "
                                                     f"native bf16: {info.get('cpu_native_bf16')})"),
            ("GPU", info.get("gpu") or "none"), ("CUDA", info.get("cuda") or "none"),
            ("Python", info.get("python")), ("platform", info.get("platform"))]
    rows += [(name, ver or "not installed") for name, ver in (info.get("libraries") or {}).items()]
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<h2>Run</h2><table style=\"width:auto\">{body}</table>\n"


def with_provenance(page: str, info: dict | None) -> str:
    """``page`` (from :func:`summary_html`) with the :func:`provenance_html` section before ``</body>``."""
    i = page.rfind("</body>")
    if i < 0:
        raise ValueError("summary page has no </body>")
    return page[:i] + provenance_html(info) + page[i:]
