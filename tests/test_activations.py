import pytest
import torch

from cotmech.activations import INDEX_COLUMNS, extract_pairs
from cotmech.readout import assign_hosts, extract

BASE = "### Input:\nWumpus is fast. Max is wumpus. True or false: Max is fast.\n### Response:\n"
TAILS = {"a": ["Rex is yumpus. Rex is", "Rex is yumpus.", "Rex"], "b": ["Fae is zumpus. Zumpus is dull", "Fae is"]}


def _seqs(tok):
    seqs, groups = [], []
    for g, tails in TAILS.items():
        for t in tails:
            seqs.append(tok(BASE + t).input_ids)
            groups.append(g)
    return seqs, groups


@pytest.fixture(scope="module")
def acts_and_seqs(tiny_model):
    seqs, groups = _seqs(tiny_model.tokenizer)
    return tiny_model, seqs, extract(tiny_model, seqs, groups=groups, batch_size=2)


def _reference(model, seq):
    """Plain HF forward of one unpadded, uncached sequence with eager attention (full matrices)."""
    prev = model.hf.config._attn_implementation
    model.hf.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return model.hf(input_ids=torch.tensor([seq]), output_attentions=True, output_hidden_states=True)
    finally:
        model.hf.set_attn_implementation(prev)


def test_assign_hosts():
    seqs = [[1, 2], [1, 2, 3], [1, 2, 3, 4], [1, 5], [1, 2]]
    assert assign_hosts(seqs) == [2, 2, 2, 3, 2]
    # groups forbid sharing across examples
    assert assign_hosts(seqs, groups=["x", "x", "x", "x", "y"]) == [2, 2, 2, 3, 4]


def test_shapes(acts_and_seqs):
    m, seqs, a = acts_and_seqs
    n, S = len(seqs), max(map(len, seqs))
    assert a["resid"].shape == (n, m.n_layers + 1, m.d_model)
    assert a["attn_out"].shape == (n, m.n_layers, m.d_model)
    assert a["z"].shape == (n, m.n_layers, m.n_heads, m.d_head)
    assert a["attn"].shape == (n, m.n_layers, m.n_heads, S)
    for i, s in enumerate(seqs):  # rows are probability distributions over the sequence's own tokens
        torch.testing.assert_close(a["attn"][i].sum(-1), torch.ones(m.n_layers, m.n_heads))
        assert (a["attn"][i, :, :, :S - len(s)] == 0).all()


def test_matches_full_unpadded_forward(acts_and_seqs):
    """Prefix cache + host sharing + padding change nothing: residuals and attention rows equal a plain full
    forward of each sequence alone; the final residual through norm + unembedding gives the model's logits."""
    m, seqs, a = acts_and_seqs
    for i, s in enumerate(seqs):
        ref = _reference(m, s)
        hs = torch.stack([h[0, -1] for h in ref.hidden_states[:-1]])  # embeddings .. after block L-2
        torch.testing.assert_close(a["resid"][i, :-1], hs, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(m.logits_from_resid(a["resid"][i, -1]), ref.logits[0, -1], atol=1e-4, rtol=1e-4)
        full_rows = torch.stack([att[0, :, -1] for att in ref.attentions])  # [L, H, len]
        torch.testing.assert_close(a["attn"][i, :, :, -len(s):], full_rows, atol=1e-6, rtol=1e-5)


def test_residual_decomposition(acts_and_seqs):
    """resid[l+1] - resid[l] - attn_out[l] equals the MLP output of block l (read with plain torch hooks)."""
    m, seqs, a = acts_and_seqs
    outs: dict[int, torch.Tensor] = {}
    hooks = [layer.mlp.register_forward_hook(lambda mod, inp, out, i=i: outs.__setitem__(i, out[0, -1].clone()))
             for i, layer in enumerate(m.hf_layers())]
    try:
        for i, s in enumerate(seqs):
            with torch.no_grad():
                m.hf(input_ids=torch.tensor([s]))
            for layer in range(m.n_layers):
                delta = a["resid"][i, layer + 1] - a["resid"][i, layer] - a["attn_out"][i, layer]
                torch.testing.assert_close(delta, outs[layer], atol=1e-5, rtol=1e-4)
    finally:
        for h in hooks:
            h.remove()


def test_heads_sum_to_attn_out(acts_and_seqs):
    m, _, a = acts_and_seqs
    for layer in range(m.n_layers):
        w_o = m.w_o(layer)  # [H, d_head, d_model]
        bias = m.hf_o_proj(layer).bias
        per_head = torch.einsum("nhd,hdm->nm", a["z"][:, layer], w_o.float())
        if bias is not None:
            per_head = per_head + bias.float()
        torch.testing.assert_close(per_head, a["attn_out"][:, layer], atol=1e-5, rtol=1e-4)


def test_attention_implementation_restored(tiny_llama):
    prev = tiny_llama.hf.config._attn_implementation
    seqs, groups = _seqs(tiny_llama.tokenizer)
    extract(tiny_llama, seqs[:2], batch_size=4)
    assert tiny_llama.hf.config._attn_implementation == prev


def test_extract_pairs_index(tiny_llama):
    tok = tiny_llama.tokenizer
    seqs, groups = _seqs(tok)
    pairs = [{"pair_id": f"{g}-k{i}", "example_id": g, "subtask": i, "kind": "copy", "clean_ids": s,
              "answer_id": s[-1], "answer_pos": None if i else 3} for i, (s, g) in enumerate(zip(seqs, groups))]
    acts, index = extract_pairs(tiny_llama, pairs, batch_size=3)
    assert list(index.columns) == INDEX_COLUMNS
    assert index["row"].tolist() == list(range(len(pairs)))
    assert index["length"].tolist() == [len(s) for s in seqs]
    assert index["answer_pos"].isna().tolist() == [False] + [True] * (len(pairs) - 1)
    single = extract(tiny_llama, [seqs[2]])  # row order follows the pairs, whatever the hosting
    torch.testing.assert_close(acts["resid"][2], single["resid"][0], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="missing field 'answer_id'"):
        extract_pairs(tiny_llama, [{k: v for k, v in pairs[0].items() if k != "answer_id"}])
