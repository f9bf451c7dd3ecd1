"""scripts/make_tasks.py: determinism, balance, verification, import mode and error exits."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from cotmech.io import RecordError, read_jsonl
from cotmech.prontoqa.datasets import build_dataset, dataset_seed
from cotmech.prontoqa.verify import verify

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_tasks.py"
SPEC = {"ontology": "fictional", "hops": 2, "style": "paper", "n": 40, "distractors": "none",
        "ordering": "preorder", "import": None}


@pytest.fixture(scope="module")
def make_tasks():
    spec = importlib.util.spec_from_file_location("make_tasks", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def _run(main, tmp_path, name, spec, seed, out="out.jsonl"):
    path = tmp_path / out
    rc = main(["--dataset", name, "--settings", json.dumps({"datasets": {name: spec}, "seed": seed}),
               "--out", str(path)])
    return rc, path


def test_deterministic_and_balanced(make_tasks, tmp_path):
    rc1, a = _run(make_tasks, tmp_path, "fictional", SPEC, 1234, "a.jsonl")
    rc2, b = _run(make_tasks, tmp_path, "fictional", SPEC, 1234, "b.jsonl")
    rc3, c = _run(make_tasks, tmp_path, "fictional", SPEC, 1235, "c.jsonl")
    rc4, d = _run(make_tasks, tmp_path, "other", SPEC, 1234, "d.jsonl")
    assert rc1 == rc2 == rc3 == rc4 == 0
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    recs = read_jsonl(a)
    assert len(recs) == 40 and sum(r["label"] for r in recs) == 20 and all(verify(r).ok for r in recs)
    assert recs[0]["id"] == "fictional-0000"
    assert [r["question"] for r in read_jsonl(d)] != [r["question"] for r in recs]  # seed depends on the name
    assert dataset_seed(1234, "x") == dataset_seed(1234, "x") != dataset_seed(1234, "y")


def test_import_mode(make_tasks, tmp_path, fixtures_dir, capsys):
    out = tmp_path / "imp.jsonl"
    assert make_tasks(["--import", str(fixtures_dir / "prontoqa/main_3hop_fictional.json"), "--out", str(out)]) == 0
    assert "20 records, 0 duplicates dropped, 20 verified, 0 rejected" in capsys.readouterr().out
    assert len(read_jsonl(out)) == 20
    # a record that does not verify is counted and tallied by reason, not written
    bad = json.loads((fixtures_dir / "authors/2hop_fictional_sample.json").read_text())[:3]
    bad[1]["label"] = "True" if bad[1]["label"] == "False" else "False"
    src = tmp_path / "mixed.json"
    src.write_text(json.dumps(bad))
    assert make_tasks(["--import", str(src), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 records, 0 duplicates dropped, 2 verified, 1 rejected" in text
    # the rejection names the record (its place in the file) and the reason
    assert "rejected 1: mixed.json: record 1: label " in text
    assert len(read_jsonl(out)) == 2


def test_import_non_utf8(make_tasks, tmp_path, capsys):
    """#18: a file that is not UTF-8 gives one error line naming the file, not a traceback."""
    src = tmp_path / "latin1.json"
    src.write_bytes(b'[{"question": "Caf\xe9 is a wumpus."}]')
    assert make_tasks(["--import", str(src), "--out", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {src}: not UTF-8 text") and "byte 18" in err
    assert not (tmp_path / "x.jsonl").exists()


def test_import_duplicates_warn(make_tasks, tmp_path, fixtures_dir, capsys):
    """#18: duplicate records (same question and query) are named in a warning and written once."""
    recs = json.loads((fixtures_dir / "authors/2hop_fictional_sample.json").read_text())[:3]
    src = tmp_path / "dup.json"
    src.write_text(json.dumps(recs + [recs[1]]))
    out = tmp_path / "d.jsonl"
    assert make_tasks(["--import", str(src), "--out", str(out)]) == 0
    cap = capsys.readouterr()
    assert "warning: dup.json: record 3 duplicates dup.json: record 1 (same question and query); dropped" in cap.err
    assert "4 records, 1 duplicates dropped, 3 verified, 0 rejected" in cap.out
    assert [r["source"]["key"] for r in read_jsonl(out)] == ["0", "1", "2"]
    spec = dict(SPEC, n=10, ontology="fictional", **{"import": str(src)})
    assert [r["source"]["key"] for r in build_dataset("dup", spec, 0)] == ["0", "1", "2"]
    assert "record 3 duplicates dup.json: record 1" in capsys.readouterr().err


def test_import_other_hops_fails(make_tasks, tmp_path, fixtures_dir, capsys):
    """#18: importing a 2-hop file into a dataset declared with 3 hops fails naming both hop counts and the file."""
    path = fixtures_dir / "authors/2hop_fictional_sample.json"
    spec = dict(SPEC, hops=3, **{"import": str(path)})
    with pytest.raises(RecordError, match=r"datasets\.imp \(import .*2hop_fictional_sample\.json\): declared hops 3 "
                                          r"but the file holds 200 record\(s\) with 2 hops \(first: "
                                          r"2hop_fictional_sample\.json: record 0\)"):
        build_dataset("imp", spec, 0)
    rc, out = _run(make_tasks, tmp_path, "imp", spec, 1)
    assert rc == 2 and not out.exists() and "declared hops 3" in capsys.readouterr().err
    three = dict(spec, n=50, style="original", **{"import": str(fixtures_dir / "prontoqa/main_3hop_fictional.json")})
    assert len(build_dataset("imp3", three, 0)) == 20  # the declared hops match: accepted


def test_import_via_config(tmp_path, fixtures_dir):
    spec = dict(SPEC, n=7, ontology="false", **{"import": str(fixtures_dir / "authors/2hop_falseontology_sample.json")})
    recs = build_dataset("imp", spec, 0)
    assert len(recs) == 7 and {r["ontology"] for r in recs} == {"false"}
    assert [r["id"] for r in recs[:2]] == ["imp-0000", "imp-0001"] and recs[1]["source"]["key"] == "1"
    with pytest.raises(RecordError, match="ontology 'fictional' but .* holds false records"):
        build_dataset("imp", dict(spec, ontology="fictional"), 0)


def test_errors(make_tasks, tmp_path, capsys):
    rc, out = _run(make_tasks, tmp_path, "d", dict(SPEC, ontology="alien"), 1)
    assert rc == 2 and "datasets.d: unknown ontology 'alien'" in capsys.readouterr().err and not out.exists()
    rc, _ = _run(make_tasks, tmp_path, "d", dict(SPEC, colour="red"), 1)
    assert rc == 2 and "unknown keys ['colour']" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('[{"question": "Max is a wumpus."}]')
    assert make_tasks(["--import", str(bad), "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "record 0: missing key 'query'" in capsys.readouterr().err
    assert make_tasks(["--dataset", "d", "--settings", "{not json", "--out", str(tmp_path / "y.jsonl")]) == 2
    assert "--settings: not valid JSON" in capsys.readouterr().err
    with pytest.raises(RecordError, match="missing keys"):
        build_dataset("d", {"n": 3}, 0)
    with pytest.raises(SystemExit) as e:
        make_tasks(["--help"])
    assert e.value.code == 0
