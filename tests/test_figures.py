"""Every figure function draws a non-empty PNG (and a PDF) from small tables computed in the test."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cotmech import figures, flow, horizon
from test_flow import _fake_traces


def _ok(paths):
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    for p in paths:
        assert p.stat().st_size > 2000
    import matplotlib.image as mpimg

    img = mpimg.imread(paths[0])
    assert img.shape[0] > 100 and img.shape[1] > 100
    assert np.std(img[..., :3]) > 0.01  # not a blank canvas


@pytest.fixture(scope="module")
def traces():
    return _fake_traces()


def test_flow_figures(tmp_path, traces):
    L, H = 4, 2
    _ok(figures.depth_maps(flow.depth_maps(traces), flow.depth_summary(traces), L, H, tmp_path / "depth"))
    _ok(figures.answer_sources(flow.answer_sources(traces), tmp_path / "sources"))
    _ok(figures.head_sources(flow.head_sources(traces), L, H, tmp_path / "source_heads"))
    _ok(figures.rift(flow.head_context(traces), flow.context_by_layer(traces), L, H, tmp_path / "rift"))
    _ok(figures.flow_tree(traces[0], tmp_path / "tree"))
    prof = flow.attention_profile(traces)
    _ok(figures.attention(prof, tmp_path / "attn"))
    with pytest.raises(ValueError, match="empty"):
        figures.head_sources(pd.DataFrame(columns=["subtask"]), L, H, tmp_path / "x")


def test_horizon_figure(tmp_path):
    t = pd.DataFrame([{"example_id": e, "s": s, "layer": layer, "n_ref": 10, "first_div": fd, "agree": fd / 10,
                       "exact": fd == 10}
                      for e, fds in (("a", (10, 3, 10)), ("b", (10, 10, 6)))
                      for s in (0, 2) for layer, fd in zip((-1, 0, 4), fds)])
    _ok(figures.horizon(horizon.aggregate(t, 8), 8, tmp_path / "horizon"))


def test_task_figure(tmp_path):
    prompt = "### Input:\nSterpuses are earthy. Impuses are sterpuses. Wren is impus. True or false: Wren is earthy.\n"
    gen = {"id": "x", "prompt": prompt, "question": "Sterpuses are earthy. Impuses are sterpuses. Wren is impus.",
           "query": "True or false: Wren is earthy.",
           "answer": "Wren is impus. Impuses are sterpuses. Wren is sterpus. Sterpuses are earthy. Wren is earthy. True"}
    words = gen["answer"].split(" ")
    pairs, pos = [], 0
    kinds = {0: "decision", 2: "copy", 5: "induction"}
    for i, w in enumerate(words[:6]):
        if i in kinds:
            pairs.append({"pair_id": f"x-k{i}", "subtask": i, "kind": kinds[i], "answer": w,
                          "clean": prompt + gen["answer"][:max(0, pos - 1)]})
        pos += len(w) + 1
    _ok(figures.task_example(gen, pairs, tmp_path / "task"))
    with pytest.raises(ValueError, match="prompt"):
        figures.task_example(gen, [{**pairs[0], "clean": "other"}], tmp_path / "bad")
