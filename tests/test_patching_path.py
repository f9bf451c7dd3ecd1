"""Path patching: all paths open = activation patching; paths into earlier layers carry nothing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cotmech.models import load_model
from cotmech.patching.data import make_pair
from cotmech.patching.exact import exact_sweep
from cotmech.patching.path import PATHS, path_patch, path_table, pick_heads


@pytest.fixture(scope="module")
def model():
    return load_model("random:tiny-qwen2?initializer_range=0.2&num_hidden_layers=3", dtype="float32", device="cpu")


def pairs():
    g = torch.Generator().manual_seed(7)
    out = []
    for i, (T, f) in enumerate([(12, 5), (10, 0)]):
        c = torch.randint(3, 500, (T,), generator=g).tolist()
        k = list(c)
        k[f] = 3 + (c[f] + 11) % 497
        out.append(make_pair(f"p{i}", c, k, answer_id=c[-1], corrupt_answer_id=k[f]))
    return out


def test_all_paths_open_equals_activation_patching(model):
    ps = pairs()
    senders = [(0, 1), (1, 3), (2, 0)]
    ex = exact_sweep(model, ps, progress=False).per_pair_scores()
    v = path_patch(model, ps, senders, receivers=[(2, 1)], paths=["logits"], frozen="none", progress=False)
    got = (v["patched"][:, :, 0] - v["base"][:, None]) / (v["source"] - v["base"])[:, None]
    want = np.stack([ex[:, lay, h] for lay, h in senders], axis=1)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_receivers_below_senders_get_nothing_and_frozen_differs(model):
    ps = pairs()
    senders = [(1, 0), (2, 2)]
    v = path_patch(model, ps, senders, receivers=[(0, 1), (1, 2)], paths=list(PATHS), progress=False)
    chan = v["patched"][:, :, 1:]  # q, k, v, qkv: receivers in layers <= the senders' cannot be reached
    np.testing.assert_allclose(chan, np.broadcast_to(v["base"][:, None, None], chan.shape), atol=1e-5)
    # freezing the other heads removes the sender's indirect paths through later heads: not activation patching
    open_ = path_patch(model, ps, [(0, 1)], receivers=[], paths=["logits"], frozen="none", progress=False)
    frozen = path_patch(model, ps, [(0, 1)], receivers=[], paths=["logits"], frozen="all", progress=False)
    assert np.abs(open_["patched"] - frozen["patched"]).max() > 1e-4


def test_later_receivers_do_receive(model):
    v = path_patch(model, pairs(), [(0, 1), (0, 3)], receivers=[(2, 0), (2, 3)], paths=["q", "k", "v", "qkv"],
                   progress=False)
    assert np.abs(v["patched"] - v["base"][:, None, None]).max() > 1e-4
    df = path_table(v, [(0, 1), (0, 3)], ["q", "k", "v", "qkv"], subtask=3, n_boot=20, seed=1)
    assert list(df.columns[:4]) == ["subtask", "sender_layer", "sender_head", "path"] and len(df) == 8
    assert (df["subtask"] == 3).all() and (df["n"] == 2).all()


def test_pick_heads_splits_halves():
    import pandas as pd

    t = pd.DataFrame({"layer": [0, 0, 1, 2, 3, 3], "head": [0, 1, 0, 0, 1, 0], "score": [0.1, 0.5, 0.3, 0.9, 0.2, 0.4]})
    s, r = pick_heads(t, n_layers=4, n_senders=2, n_receivers=1)
    assert s == [(0, 1), (1, 0)] and r == [(2, 0)]


def test_bad_path_rejected(model):
    with pytest.raises(ValueError, match="unknown path"):
        path_patch(model, pairs(), [(0, 0)], [(1, 0)], paths=["mlp"], progress=False)
