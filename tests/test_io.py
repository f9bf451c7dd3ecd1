"""Atomic outputs: a failed write leaves nothing behind, a finished one gets the umask's file mode."""
import os

import pytest

from cotmech import io


def test_failed_write_leaves_no_output_and_no_temp_file(tmp_path):
    out = tmp_path / "t.json"
    with pytest.raises(RuntimeError), io.atomic_path(out) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_finished_write_has_the_umask_mode_and_content(tmp_path, monkeypatch):
    old = os.umask(0o022)
    try:
        monkeypatch.setattr(io, "_UMASK", 0o022)
        io.write_json(tmp_path / "t.json", {"b": 1, "a": [1, 2]})
    finally:
        os.umask(old)
    out = tmp_path / "t.json"
    assert out.stat().st_mode & 0o777 == 0o644
    assert io.read_json(out) == {"a": [1, 2], "b": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]
