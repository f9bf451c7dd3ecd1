"""Head roles: head outputs add up to the attention output; writer/copy components against direct computations."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import capture_resid

from cotmech.heads import WRITER_SCORE_PARTS, copy_components, head_outputs, o_bias, writer_components
from cotmech.roles import bootstrap_share, merge, score_table, top_k_share
from cotmech.stats import select_rows
from cotmech.unembed import make_unembed

SEQS = [[5, 17, 33, 8, 91, 12, 40], [7, 7, 120, 3, 8], [200, 4, 19, 66, 2, 9]]


def _capture(model, seqs):
    """Last-position resid [N, L+1, d], attn_out [N, L, d], z [N, L, H, dh] with plain nnsight traces."""
    resid = torch.stack([r[-1] for r in capture_resid(model, seqs)])
    zs, outs = [], []
    for s in seqs:
        saved: list = []
        with model.lm.trace(torch.tensor([s])):
            for i in range(model.n_layers):
                saved.append((model.o_proj(i).input.save(), model.o_proj(i).output.save()))
        zs.append(torch.stack([z[0, -1] for z, _ in saved]).reshape(model.n_layers, model.n_heads, model.d_head))
        outs.append(torch.stack([o[0, -1] for _, o in saved]))
    return resid, torch.stack(outs).float().detach(), torch.stack(zs).float().detach()


@pytest.fixture(scope="module")
def biased_llama():
    from cotmech.models import load_model

    return load_model("random:tiny-llama?attention_bias=true&seed=4", dtype="float32", device="cpu")


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_qwen2", "biased_llama"])
def test_head_outputs_sum_to_attention_output(which, request):
    model = request.getfixturevalue(which)
    _, attn_out, z = _capture(model, SEQS)
    for layer in range(model.n_layers):
        x = head_outputs(z[:, layer], model.w_o(layer))  # [N, H, d]
        b = o_bias(model, layer)
        assert (b is not None) == (which == "biased_llama")
        total = x.sum(1) + (b if b is not None else 0.0)
        torch.testing.assert_close(total, attn_out[:, layer], atol=1e-5, rtol=1e-4)


def test_writer_components_match_direct_lens(biased_llama):
    model = biased_llama
    resid, attn_out, z = _capture(model, SEQS)
    lens = make_unembed(model)
    ans = torch.tensor([3, 44, 100])
    comp = writer_components(lens, model, resid, attn_out, z, ans)
    rows = torch.arange(3)
    for layer in (0, model.n_layers - 1):
        b = o_bias(model, layer)
        x = head_outputs(z[:, layer], model.w_o(layer))
        for h in range(model.n_heads):
            direct = torch.softmax(model.logits_from_resid(resid[:, layer] + x[:, h] + b), -1)[rows, ans]
            np.testing.assert_allclose(comp["p_head"][:, layer, h], direct.numpy(), rtol=2e-4, atol=1e-7)
            alone = torch.softmax(model.logits_from_resid(x[:, h]), -1)[rows, ans]
            np.testing.assert_allclose(comp["p_alone"][:, layer, h], alone.numpy(), rtol=2e-4, atol=1e-7)
        mid = torch.softmax(model.logits_from_resid(resid[:, layer] + attn_out[:, layer]), -1)[rows, ans]
        np.testing.assert_allclose(comp["p_mid"][:, layer], mid.numpy(), rtol=2e-4, atol=1e-7)
    # DLA is additive: all heads + the o_proj bias = the attention output's share of the centred answer logit
    g = lens.direction(ans) - lens.G.mean(0)
    s_final = lens.scale(resid[:, -1])
    for layer in range(model.n_layers):
        bias_part = (lens.prep(o_bias(model, layer)[None]) * g).sum(-1) / s_final
        whole = (lens.prep(attn_out[:, layer]) * g).sum(-1) / s_final
        np.testing.assert_allclose(comp["dla"][:, layer].sum(-1) + bias_part.numpy(), whole.numpy(), rtol=1e-4,
                                   atol=1e-5)
    # p_pre is the lens probability at resid_pre of every layer (p_mid, above, is at resid_pre + attn_out)
    for layer in range(model.n_layers):
        pre = torch.softmax(model.logits_from_resid(resid[:, layer]), -1)[rows, ans]
        np.testing.assert_allclose(comp["p_pre"][:, layer], pre.numpy(), rtol=2e-4, atol=1e-7)
    # row chunking (one row per unembedding product) changes nothing
    one_row = writer_components(lens, model, resid, attn_out, z, ans, max_bytes=1)
    for key, val in comp.items():
        np.testing.assert_allclose(one_row[key], val, rtol=1e-5, atol=1e-7, err_msg=key)
    # the knockout's writer ranking computes only the parts the score reads: the same numbers, nothing else
    some = writer_components(lens, model, resid, attn_out, z, ans, parts=WRITER_SCORE_PARTS)
    assert sorted(some) == sorted(WRITER_SCORE_PARTS)
    for key, val in some.items():
        np.testing.assert_array_equal(val, comp[key], err_msg=key)
    with pytest.raises(ValueError, match="parts"):
        writer_components(lens, model, resid, attn_out, z, ans, parts=("p_head", "logit"))


def test_copy_components_left_padding_and_missing_positions(tiny_llama):
    N, L, H, S = 3, tiny_llama.n_layers, tiny_llama.n_heads, 9
    attn = torch.zeros(N, L, H, S)
    length = np.array([9, 5, 7])
    answer_pos = np.array([2, 1, None], dtype=object)
    attn[0, :, :, 2] = 0.7  # no padding: column = position
    attn[1, :, :, 9 - 5 + 1] = 0.4  # 4 left pads
    attn[1, :, :, 1] = 0.9  # a pad column must not be read
    z = torch.randn(N, L, H, tiny_llama.d_head)
    lens = make_unembed(tiny_llama)
    ans = torch.tensor([5, 6, 7])
    c = copy_components(lens, tiny_llama, z, attn, length, answer_pos, ans)
    assert np.allclose(c["attn"][0], 0.7) and np.allclose(c["attn"][1], 0.4) and np.isnan(c["attn"][2]).all()
    unit = lens.direction(ans[:1])[0] / lens.direction(ans[:1])[0].norm()
    x = head_outputs(z[0, 1], tiny_llama.w_o(1).detach())
    np.testing.assert_allclose(c["proj"][0, 1], (x @ unit).numpy(), rtol=1e-4, atol=1e-6)
    t = score_table("copy", c, np.array([0, 0, 1]))
    assert set(t["subtask"]) == {-1, 0, 1}
    s1 = t[t.subtask == 1]
    assert (s1["n"] == 0).all() and (s1["n_excluded"] == 1).all() and s1["score"].isna().all()
    s0 = t[t.subtask == 0].sort_values(["layer", "head"])
    expect = np.mean([c["attn"][i] * c["proj"][i] for i in (0, 1)], 0).reshape(-1)
    np.testing.assert_allclose(s0["score"], expect)
    with pytest.raises(ValueError, match="row 0"):
        copy_components(lens, tiny_llama, z, attn, length, np.array([12, 1, None], dtype=object), ans)


def _planted(L=8, H=4, n=12, seed=0):
    """Writer components where heads (6, 1) and (7, 2) write the answer and everything else adds nothing."""
    rng = np.random.default_rng(seed)
    p_pre = rng.uniform(0.01, 0.02, size=(n, L))
    p_head = np.repeat(p_pre[:, :, None], H, 2).copy()
    p_head[:, 6, 1] += 0.3
    p_head[:, 7, 2] += 0.2
    p_mid = p_pre + 0.3
    zero = np.zeros((n, L, H))
    return {"p_head": p_head, "p_pre": p_pre, "p_mid": p_mid, "p_alone": zero, "dla": zero}


def test_writer_scores_merge_and_top_k_share():
    comp = _planted()
    subtasks = np.repeat([0, 1, 2], 4)
    t = score_table("writers", comp, subtasks)
    merged = t[t.subtask == -1].pivot(index="layer", columns="head", values="score").to_numpy()
    assert np.unravel_index(np.argmax(merged), merged.shape) == (6, 1)
    assert np.allclose(np.delete(merged.reshape(-1), [6 * 4 + 1, 7 * 4 + 2]), 0.0)
    per = [t[t.subtask == s].pivot(index="layer", columns="head", values="score").to_numpy() for s in (0, 1, 2)]
    np.testing.assert_allclose(merged, np.mean(per, 0))
    share, heads = top_k_share(merged, 2, 8)
    assert share == 1.0 and heads == [(6, 1), (7, 2)]
    m2 = merged.copy()
    m2[1, 3] = 5.0
    assert top_k_share(m2, 2, 8)[0] == 0.5
    groups = np.array([f"e{i}" for i in range(12)])
    a = bootstrap_share("writers", comp, subtasks, groups, 2, 8, n_boot=30, seed=1)
    b = bootstrap_share("writers", comp, subtasks, groups, 2, 8, n_boot=30, seed=1)
    assert a == b and a["share_second_half"] == 1.0 and a["ci_low"] == 1.0


def test_merge_maxabs_weighs_subtasks_equally():
    a, b = np.array([[2.0, -4.0]]), np.array([[0.1, 0.05]])
    np.testing.assert_allclose(merge([a, b], maxabs=True), [[0.75, -0.25]])
    np.testing.assert_allclose(merge([a, b], maxabs=False), [[1.05, -1.975]])


def test_select_rows_is_capped_and_seeded():
    idx = pd.DataFrame({"subtask": np.repeat([0, 1, 2], [5, 2, 7])})
    a, b = select_rows(idx, 3, seed=9), select_rows(idx, 3, seed=9)
    np.testing.assert_array_equal(a, b)
    assert list(np.bincount(idx["subtask"].to_numpy()[a])) == [3, 2, 3]
    assert len(select_rows(idx, None, seed=0)) == 14
