"""Path patching: all paths open = activation patching; unreachable receivers get nothing; frozen paths against
references (last-layer sender, the analytic product on a linear model, receivers patched by hand with GQA)."""
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


# ------------------------------------------------------------------ references (issue 19 item 3)
def _capture_z(m, ids: list[int]) -> list[torch.Tensor]:
    """Plain HF forward of one full sequence; every layer's o_proj input (z) as [seq, n_heads*d_head]."""
    zs = {}
    hooks = [m.hf_o_proj(l).register_forward_pre_hook(lambda mod, a, l=l: zs.__setitem__(l, a[0][0].detach()))
             for l in range(m.n_layers)]
    with torch.no_grad():
        m.hf(torch.tensor([ids]))
    for h in hooks:
        h.remove()
    return [zs[l] for l in range(m.n_layers)]


def _logit_diff(logits: torch.Tensor, pair) -> float:
    return float(logits[pair.answer_id] - logits[pair.corrupt_answer_id])


def test_last_layer_sender_is_the_same_frozen_and_open(model):
    # nothing sits above the last layer: freezing the other heads cannot change a last-layer sender's effect
    ps, senders = pairs(), [(2, 0), (2, 3)]
    open_ = path_patch(model, ps, senders, receivers=[], paths=["logits"], frozen="none", progress=False)
    frozen = path_patch(model, ps, senders, receivers=[], paths=["logits"], frozen="all", progress=False)
    np.testing.assert_allclose(frozen["patched"], open_["patched"], atol=1e-5, rtol=1e-5)
    assert np.abs(frozen["patched"] - frozen["base"][:, None, None]).max() > 1e-3  # the senders do something


def test_logits_path_on_linear_model_is_the_product_through_w_o_and_w_u():
    # Logits linear in every head's z, MLPs zero, norms identity: with every other head frozen, the sender's effect on
    # logit[a] - logit[c] is exactly (z_source - z_base)[last, head] @ W_O,head @ (W_U[a] - W_U[c]).
    from test_patching import linear_model

    m = linear_model()
    ps, senders = pairs(), [(0, 1), (0, 2), (1, 0), (1, 3)]
    v = path_patch(m, ps, senders, receivers=[], paths=["logits"], metric="logit_diff", frozen="all", progress=False)
    w_u = m.hf.lm_head.weight.detach()
    dh = m.d_head
    for i, p in enumerate(ps):
        z_src, z_base = _capture_z(m, p.clean_ids), _capture_z(m, p.corrupt_ids)  # denoising
        with torch.no_grad():
            base = _logit_diff(m.hf(torch.tensor([p.corrupt_ids])).logits[0, -1], p)
        assert v["base"][i] == pytest.approx(base, abs=1e-4)
        for s, (lay, h) in enumerate(senders):
            dz = (z_src[lay] - z_base[lay])[-1, h * dh:(h + 1) * dh]
            want = float(dz @ m.w_o(lay)[h].detach() @ (w_u[p.answer_id] - w_u[p.corrupt_answer_id]))
            assert v["patched"][i, s, 0] - base == pytest.approx(want, abs=1e-4, rel=1e-4), (i, lay, h)
    # the layer-0 senders' indirect path (through the layer-1 heads) is real: opening it changes the value
    open_ = path_patch(m, ps, senders[:2], receivers=[], paths=["logits"], metric="logit_diff", frozen="none",
                       progress=False)
    assert np.abs(open_["patched"] - v["patched"][:, :2]).max() > 1e-3


def test_channel_paths_equal_patching_the_receiver_by_hand(model):
    # GQA model (4 query heads, 2 key-value heads): a receiver's k/v patch is its whole key-value group. Reference:
    # step 1 = base forward with every o_proj input frozen at base except the sender's slice (from the source),
    # capturing the receiver layer's q/k/v projections; step 2 = base forward with the receiver's slice of those
    # projection outputs overwritten; metric = logit difference at the last position.
    assert (model.n_heads, model.n_kv_heads) == (4, 2)
    ps, sender, receiver = pairs(), (0, 1), (2, 2)  # head 2 is in key-value group 1 (2 // 2, not 2 % 2)
    paths = ["q", "k", "v", "qkv"]
    v = path_patch(model, ps, [sender], receivers=[receiver], paths=paths, metric="logit_diff", progress=False)
    attn = [lay.self_attn for lay in model.hf.model.layers]
    dh, rl, rh = model.d_head, receiver[0], receiver[1]
    unit = {"q": rh, "k": rh // 2, "v": rh // 2}
    for i, p in enumerate(ps):
        z_src, z_base = _capture_z(model, p.clean_ids), _capture_z(model, p.corrupt_ids)
        sl, sh = sender

        def frozen(mod, a, lay):
            z = z_base[lay].clone()[None]
            if lay == sl:
                z[0, :, sh * dh:(sh + 1) * dh] = z_src[lay][:, sh * dh:(sh + 1) * dh]
            return (z,)
        step1 = {}
        hooks = [model.hf_o_proj(l).register_forward_pre_hook(lambda mod, a, l=l: frozen(mod, a, l))
                 for l in range(model.n_layers)]
        hooks += [getattr(attn[rl], f"{c}_proj").register_forward_hook(
            lambda mod, a, o, c=c: step1.__setitem__(c, o.detach())) for c in "qkv"]
        with torch.no_grad():
            model.hf(torch.tensor([p.corrupt_ids]))
        for h in hooks:
            h.remove()
        for j, path in enumerate(paths):
            def put(mod, a, o, c):
                o = o.clone()
                u = unit[c]
                o[..., u * dh:(u + 1) * dh] = step1[c][..., u * dh:(u + 1) * dh]
                return o
            hooks = [getattr(attn[rl], f"{c}_proj").register_forward_hook(lambda mod, a, o, c=c: put(mod, a, o, c))
                     for c in (("q", "k", "v") if path == "qkv" else (path,))]
            with torch.no_grad():
                want = _logit_diff(model.hf(torch.tensor([p.corrupt_ids])).logits[0, -1], p)
            for h in hooks:
                h.remove()
            assert v["patched"][i, 0, j] == pytest.approx(want, abs=1e-4, rel=1e-4), (i, path)
    assert np.abs(v["patched"] - v["base"][:, None, None]).max() > 1e-3  # not all equal to the base run
