"""Paper-vs-run table and HTML summary (study.md §1.4 and the E-sections).

Reference values live in ``cotmech/data/paper_numbers.yaml`` (each with its study.md section and evidence tag).
Our values are read from result files under ``results/<model>/`` by the reader named in each entry; a row whose
result file is absent says "not run". Nothing here is a result literal.
"""
from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

PAPER_NUMBERS = Path(__file__).with_name("data") / "paper_numbers.yaml"
COLUMNS = ["id", "claim", "section", "tag", "paper", "ours", "ci_low", "ci_high", "n", "status", "source", "note",
           "model"]
NOT_RUN = "not run"


def load_paper_numbers(path: str | Path = PAPER_NUMBERS) -> list[dict]:
    """The reference entries; each needs id, claim, paper, tag (P/S/C/R), section, reader."""
    import yaml

    with open(path, encoding="utf-8") as f:
        entries = yaml.safe_load(f)
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of entries")
    for i, e in enumerate(entries):
        for key in ("id", "claim", "paper", "tag", "section", "reader"):
            if key not in e:
                raise ValueError(f"{path}: entry {i} ({e.get('id', '?')}): missing {key!r}")
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


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _rel(p: Path, mres: Path) -> str:
    try:
        return str(p.relative_to(mres.parent))
    except ValueError:
        return str(p)


def read_accuracy(mres: Path, datasets: Sequence[str], ontology: str) -> dict | None:
    from .generation import ACCURACY_DTYPES
    from .stats import wilson
    from .io import read_table

    p = mres / "accuracy.csv"
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

    p = mres / "prior_shift" / "rift.json"
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
    return {"ours": _num(v.get("rel_depth")), "ci_low": _num(v.get("rel_ci_low")), "ci_high": _num(v.get("rel_ci_high")),
            "n": v.get("n_examples"), "source": _rel(p, mres),
            "note": f"layer {v.get('rift_layer')} of {L} ({lens} lens); bootstrap CI over examples"}


def read_lens_context(mres: Path, datasets: Sequence[str], side: str, lens: str = "logit") -> dict | None:
    r = _rift_lens(mres, lens)
    if r is None:
        return None
    _, v, p = r
    s = v.get("context_abidance_rift", {}).get(side, {})
    return {"ours": _num(s.get("mean")), "ci_low": _num(s.get("ci_low")), "ci_high": _num(s.get("ci_high")),
            "n": v.get("n_pairs"), "source": _rel(p, mres),
            "note": f"{lens} lens top-1 in prompt, split at the rift layer {v.get('rift_layer')}"}


def _flow_summary(mres: Path, datasets: Sequence[str]) -> tuple[dict, Path, str] | None:
    from .io import read_json

    hit = _first(mres, datasets, "flow/{dataset}/summary.json")
    return None if hit is None else (read_json(hit[0]), hit[0], hit[1])


def read_flow_context(mres: Path, datasets: Sequence[str], key: str) -> dict | None:
    r = _flow_summary(mres, datasets)
    if r is None:
        return None
    s, p, d = r
    v = s.get(key, {})
    return {"ours": _num(v.get("share")), "ci_low": _num(v.get("ci_low")), "ci_high": _num(v.get("ci_high")),
            "n": v.get("n"), "source": _rel(p, mres),
            "note": f"{d}: {s.get('n_examples')} examples, split layer {s.get('split_layer')} of {s.get('n_layers')}; "
                    "Wilson CI over traced heads"}


def read_flow_writers(mres: Path, datasets: Sequence[str]) -> dict | None:
    r = _flow_summary(mres, datasets)
    if r is None:
        return None
    s, p, d = r
    w = s.get("writers", {})
    return {"ours": _num(w.get("share_second_half")), "ci_low": _num(w.get("ci_low")),
            "ci_high": _num(w.get("ci_high")), "n": w.get("n"), "source": _rel(p, mres),
            "note": f"{d}: depth-0 entries, layers >= {s.get('split_layer')}"}


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


def read_flow_depth(mres: Path, datasets: Sequence[str], depth: int, col: str) -> dict | None:
    def entry(r: Any, d: str) -> dict:
        ci = (r["ci_low"], r["ci_high"]) if col == "share_second_half" else (None, None)
        return {"ours": _num(r[col]), "ci_low": _num(ci[0]), "ci_high": _num(ci[1]), "n": int(r["n"]),
                "note": f"{d}: mean layer {r['mean_layer']:.2f}"}

    return _read_row(mres, datasets, "flow/{dataset}/depth_summary.csv", lambda df: df["depth"] == depth,
                     f"no traced heads at depth {depth}", entry)


def read_flow_source(mres: Path, datasets: Sequence[str], subtask: int, part: str) -> dict | None:
    from .stats import wilson

    def entry(r: Any, d: str) -> dict:
        n = int(r["n"])
        lo, hi = wilson(int(round(float(r[part]) * n)), n)
        return {"ours": _num(r[part]), "ci_low": lo, "ci_high": hi, "n": n,
                "note": f"{d}: read positions of depth-0 writers; Wilson CI (positions not independent)"}

    return _read_row(mres, datasets, "flow/{dataset}/sources.csv", lambda df: df["subtask"] == subtask,
                     f"subtask {subtask} not traced", entry)


def read_roles_share(mres: Path, datasets: Sequence[str], kind: str) -> dict | None:
    from .io import read_json

    hit = _first(mres, datasets, "roles/{dataset}/summary.json")
    if hit is None:
        return None
    s = read_json(hit[0])
    v = s.get(kind, {})
    return {"ours": _num(v.get("share_second_half")), "ci_low": _num(v.get("ci_low")),
            "ci_high": _num(v.get("ci_high")), "n": s.get("n_examples"), "source": _rel(hit[0], mres),
            "note": f"{hit[1]}: top-{s.get('k')} heads; bootstrap CI over examples"}


def read_probe_peak(mres: Path, datasets: Sequence[str], col: str) -> dict | None:
    from .io import read_table

    files = sorted((mres / "probing").rglob("accuracy.parquet")) if (mres / "probing").is_dir() else []
    if not files:
        return None
    df = read_table(files[0])
    if "task" in df.columns:
        df = df[df["task"] == "real"]
    if "probe" in df.columns and (df["probe"] == "mlp").any():
        df = df[df["probe"] == "mlp"]
    if df.empty:
        return None
    r = df.loc[df["acc"].idxmax()]
    max_layer = int(df["layer"].max())
    shots = f", {int(r['shots'])}-shot" if "shots" in df.columns else ""
    note = f"peak at layer {int(r['layer'])} of {max_layer}{shots}"
    if col == "acc":
        return {"ours": _num(r["acc"]), "ci_low": _num(r.get("ci_low")), "ci_high": _num(r.get("ci_high")),
                "n": _num(r.get("n")), "source": _rel(files[0], mres), "note": note}
    return {"ours": int(r["layer"]) / max_layer if max_layer else None, "source": _rel(files[0], mres), "note": note}


def read_knockout(mres: Path, datasets: Sequence[str], col: str) -> dict | None:
    from .io import read_table

    hit = _first(mres, datasets, "circuits/{dataset}/operating_points.csv")
    if hit is None:
        files = sorted((mres / "circuits").rglob("operating_points.csv")) if (mres / "circuits").is_dir() else []
        if not files:
            return None
        hit = (files[0], files[0].parent.name)
    df = read_table(hit[0])
    if df.empty:
        return None
    if "ranking" in df.columns and df["ranking"].astype(str).str.contains("induction").any():
        df = df[df["ranking"].astype(str).str.contains("induction")]
    rankings = ", ".join(sorted(set(map(str, df.get("ranking", [])))))
    vals = (df["n_kept"] / (df["n_kept"] + df["n_removed"])) if col == "kept_share" else df["acc"]
    return {"ours": float(vals.mean()), "ci_low": float(vals.min()), "ci_high": float(vals.max()),
            "n": int(len(df)), "source": _rel(hit[0], mres),
            "note": f"{hit[1]}: mean over {len(df)} operating points (rankings {rankings}); interval = min-max"}


def read_horizon(mres: Path, datasets: Sequence[str], layer: int, s: int) -> dict | None:
    def entry(r: Any, d: str) -> dict:
        return {"ours": _num(r["exact"]), "ci_low": _num(r["exact_ci_low"]), "ci_high": _num(r["exact_ci_high"]),
                "n": int(r["n"]), "note": f"{d}: exact continuation; mean token agreement {float(r['agree']):.3f}"}

    return _read_row(mres, datasets, "horizon/{dataset}/horizon.csv",
                     lambda df: (df["layer"] == layer) & (df["s"] == s), f"layer {layer}, s={s} not in the table",
                     entry)


READERS: dict[str, Callable[..., dict | None]] = {
    "accuracy": read_accuracy, "rift_layer": read_rift_layer, "lens_context": read_lens_context,
    "flow_context": read_flow_context, "flow_writers": read_flow_writers, "flow_depth": read_flow_depth,
    "flow_source": read_flow_source, "roles_share": read_roles_share, "probe_peak": read_probe_peak,
    "knockout": read_knockout, "horizon": read_horizon,
}


# --------------------------------------------------------------------------------------------------
# Table and HTML
# --------------------------------------------------------------------------------------------------
def paper_vs_run(mres: str | Path, datasets: Sequence[str], model: str, entries: list[dict] | None = None) -> Any:
    """One row per reference entry: the paper's value and ours (with CI) read from ``mres``, or "not run"."""
    import pandas as pd

    mres = Path(mres)
    entries = load_paper_numbers() if entries is None else entries
    rows = []
    for e in entries:
        try:
            got = READERS[e["reader"]](mres, list(datasets), **(e.get("args") or {}))
        except (KeyError, ValueError, json.JSONDecodeError) as err:
            got = {"ours": None, "note": f"unreadable result file: {err}"}
        base = {c: None for c in COLUMNS} | {k: e[k] for k in ("id", "claim", "section", "tag", "paper")}
        base["model"] = model
        if got is None:
            base["status"] = NOT_RUN
        else:
            base.update({k: got.get(k) for k in ("ours", "ci_low", "ci_high", "n", "source", "note")})
            base["status"] = "ok" if got.get("ours") is not None else "no value"
        rows.append(base)
    return pd.DataFrame(rows, columns=COLUMNS)


def _fmt(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if isinstance(x, float):
        return f"{x:.3f}"
    return html.escape(str(x))


def _fmt_n(x: Any) -> str:
    v = _num(x)
    return "" if v is None else (str(int(v)) if float(v).is_integer() else f"{v:.1f}")


def summary_html(table: Any, model_name: str, model_spec: str, figures: Sequence[str] = ()) -> str:
    """A self-contained HTML page: the paper-vs-run table (status coloured) and links to the figures."""
    n_ok = int((table["status"] == "ok").sum())
    head = ("<tr><th>claim</th><th>section</th><th>tag</th><th>paper</th><th>ours</th><th>95% CI / range</th>"
            "<th>n</th><th>note</th><th>source</th></tr>")
    body = []
    for r in table.itertuples(index=False):
        ci = f"[{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]" if _fmt(r.ci_low) else ""
        ours = _fmt(r.ours) if r.status == "ok" else f"<i>{html.escape(str(r.status))}</i>"
        body.append(f'<tr class="{html.escape(str(r.status)).replace(" ", "-")}"><td>{_fmt(r.claim)}</td>'
                    f"<td>{_fmt(r.section)}</td><td>[{_fmt(r.tag)}]</td><td>{_fmt(r.paper)}</td><td>{ours}</td>"
                    f"<td>{ci}</td><td>{_fmt_n(r.n)}</td><td>{_fmt(r.note)}</td><td><code>{_fmt(r.source)}</code></td></tr>")
    figs = "".join(f'<li><a href="{html.escape(f)}">{html.escape(f)}</a></li>' for f in figures)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cotmech: paper vs run ({html.escape(model_name)})</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; font-size: 13px; }}
table {{ border-collapse: collapse; width: 100%; }} th, td {{ border: 1px solid #ccc; padding: 3px 6px; }}
th {{ background: #eee; position: sticky; top: 0; }} tr.not-run td {{ color: #999; }}
tr.ok td:nth-child(5) {{ font-weight: bold; }} code {{ font-size: 11px; }}
</style></head><body>
<h1>How to think step-by-step: paper vs this run</h1>
<p>Model: <b>{html.escape(model_name)}</b> (<code>{html.escape(model_spec)}</code>). Paper: Llama-2-7B (32 layers).
Layer positions are compared as relative depth (layer / number of layers). Evidence tags (study.md §0):
[P] paper, [S] secondary write-up, [C] official code/data, [R] computed from the shipped result files.
Paper values are reference values from <code>cotmech/data/paper_numbers.yaml</code>; ours are read from the result
files named in the last column. {n_ok} of {len(table)} rows have a value; "not run" = the result file is absent.</p>
<table>{head}{''.join(body)}</table>
<h2>Figures</h2><ul>{figs}</ul>
</body></html>
"""
