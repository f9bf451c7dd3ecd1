"""Information-flow tracing (study.md E9) on a hand-built tiny model whose copying path is known."""
from __future__ import annotations

import math

import pytest
import torch

from cotmech import flow
from cotmech.models import load_model

L, H, DH, D, V = 4, 4, 16, 64, 512
COPY_LAYER, COPY_HEAD = 2, 1
X, Q = 300, 301  # the copied token and the query token that looks for it


@pytest.fixture(scope="module")
def copy_model():
    """tiny-llama with every attention/MLP output zeroed except one head (layer 2, head 1) that attends from the
    query token Q to the token X (content-based, RoPE made negligible) and writes X's embedding (OV = identity on
    dims 0..15); unembedding = embedding, so that head's output alone predicts X."""
    m = load_model("random:tiny-llama?rope_theta=1e12&seed=3", dtype="float32", device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        emb = torch.zeros(V, D)
        e = torch.randn(V, 16, generator=g)
        emb[:, :16] = e / e.norm(dim=1, keepdim=True)
        emb[X, 60] = 1.0  # key feature
        emb[Q, 61] = 1.0  # query feature
        m.hf.model.embed_tokens.weight.copy_(emb)
        m.hf.lm_head.weight.copy_(emb * 12.0)
        for i, layer in enumerate(m.hf.model.layers):
            layer.mlp.down_proj.weight.zero_()
            at = layer.self_attn
            for w in (at.q_proj.weight, at.k_proj.weight, at.v_proj.weight, at.o_proj.weight):
                w.zero_()
            if i == COPY_LAYER:
                s = COPY_HEAD * DH
                # RoPE pairs dim j with j + DH/2; pair 7/15 has frequency theta^(-14/16) ~ 0 here
                at.q_proj.weight[s + 7, 61] = 30.0
                at.k_proj.weight[s + 7, 60] = 30.0
                at.v_proj.weight[s:s + 16, :16] = torch.eye(16)
                at.o_proj.weight[:16, s:s + 16] = torch.eye(16)
    return m


def _ids(n: int, x_pos: int) -> list[int]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(10, 250, (n,), generator=g).tolist()
    ids[x_pos] = X
    ids[-1] = Q
    return ids


def test_trace_finds_the_copy_head_and_position(copy_model):
    ids = _ids(20, x_pos=7)
    acts = flow.capture(copy_model, ids)
    assert acts.z.shape == (L, 20, H, DH) and acts.attn.shape == (L, H, 20, 20) and acts.resid.shape == (L, 20, D)
    scorer = flow.WriterScorer(copy_model, acts)
    nodes = flow.trace(scorer, 19, X, flow.FlowConfig(l=2, k=1, p=1))
    top = nodes[0]
    assert (top["depth"], top["layer"], top["head"], top["pos"]) == (0, COPY_LAYER, COPY_HEAD, 19)
    assert top["prob"] > 0.5 > 1.0 / V * 10
    # every other head writes nothing: its own-output distribution is uniform
    others = [n for n in nodes if n["depth"] == 0 and n is not top]
    assert all(abs(n["prob"] - 1.0 / V) < 1e-6 for n in others)
    assert [r["pos"] for r in top["reads"]] == [7]
    # Stage III: the lens of resid_pre (= embedding here) at the read position gives X, traced on in lower layers
    assert [t["id"] for t in top["reads"][0]["tokens"]] == [X]
    kids = [n for n in nodes if n["parent"] == top["id"]]
    assert kids and all(n["layer"] < COPY_LAYER and n["pos"] == 7 and n["token"] == X for n in kids)
    # hyper-parameters shrink with depth: depth 1 keeps l - 1 heads per parent
    assert len(kids) == 1


def test_writer_scores_match_direct_unembedding(copy_model):
    """Stage I via cached normalisers equals a direct full softmax of each head's own output."""
    ids = _ids(12, x_pos=3)
    acts = flow.capture(copy_model, ids)
    scorer = flow.WriterScorer(copy_model, acts, chunk=5)
    p = scorer.probs(11, X, below=L)
    for layer in range(L):
        w_o = copy_model.w_o(layer)  # [H, dh, D]
        for h in range(H):
            out = acts.z[layer, 11, h] @ w_o[h]
            direct = torch.softmax(copy_model.logits_from_resid(out).float(), -1)[X]
            assert math.isclose(float(p[layer, h]), float(direct), rel_tol=1e-4, abs_tol=1e-7)
    assert torch.isnan(scorer.probs(11, X, below=2)[2:]).all()
    # prefilter: only the top-M heads by raw logit get a normaliser; their values are the exact ones
    pre = flow.WriterScorer(copy_model, acts, prefilter=3)
    q = pre.probs(11, X, below=L)
    assert int((~torch.isnan(q)).sum()) == 3 and pre.n_lse == 3
    torch.testing.assert_close(q[~torch.isnan(q)], p[~torch.isnan(q)])
    assert not torch.isnan(q[COPY_LAYER, COPY_HEAD])


def test_head_outputs_sum_to_attention_output(tiny_model):
    """z captured per head, projected by w_o and summed, equals the o_proj output (head decomposition)."""
    ids = list(range(5, 17))
    acts = flow.capture(tiny_model, ids)
    with torch.no_grad(), tiny_model.lm.trace(torch.tensor([ids])):
        out = tiny_model.o_proj(1).output.save()
    recon = torch.einsum("shd,hdm->sm", acts.z[1], tiny_model.w_o(1))
    torch.testing.assert_close(recon, out[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(acts.attn[1].sum(-1), torch.ones(tiny_model.n_heads, len(ids)), atol=1e-5, rtol=0)


def _fake_traces() -> list[dict]:
    def node(i, parent, depth, layer, head, tok, ctx, part):
        return {"id": i, "parent": parent, "depth": depth, "layer": layer, "head": head, "pos": 5, "token": tok,
                "text": str(tok), "prob": 0.5, "in_context": ctx,
                "reads": [{"pos": 3, "attn": 0.4, "part": part, "tokens": []}]}

    t1 = {"pair_id": "e1-k0", "example_id": "e1", "subtask": 0, "kind": "decision", "source": "query",
          "n_layers": 4, "n_heads": 2, "length": 6, "bounds": [2, 4], "attention": [0.1] * 6,
          "nodes": [node(0, -1, 0, 3, 0, 7, False, "question"), node(1, -1, 0, 2, 1, 7, True, "generated"),
                    node(2, 0, 1, 1, 0, 8, True, "fewshot"), node(3, 2, 2, 0, 1, 9, False, "fewshot")]}
    t2 = {**t1, "pair_id": "e2-k0", "example_id": "e2",
          "nodes": [node(0, -1, 0, 3, 0, 7, True, "question"), node(1, 0, 1, 1, 0, 8, False, "question")]}
    return [t1, t2]


def test_summaries_count_what_the_traces_hold():
    tr = _fake_traces()
    ds = flow.depth_summary(tr).set_index("depth")
    assert ds.loc[0, "n"] == 3 and math.isclose(ds.loc[0, "mean_layer"], (3 + 2 + 3) / 3)
    assert ds.loc[0, "share_second_half"] == 1.0 and ds.loc[1, "share_second_half"] == 0.0
    src = flow.answer_sources(tr).set_index("subtask")
    assert math.isclose(src.loc[0, "question"], 2 / 3) and math.isclose(src.loc[0, "generated"], 1 / 3)
    ctx = flow.context_by_layer(tr).set_index("layer")
    assert ctx.loc[3, "share"] == 1.0  # writers count as context
    assert ctx.loc[1, "share"] == 0.5 and ctx.loc[1, "share_without_writers"] == 0.5
    rift = flow.rift_summary(tr)
    assert rift["split_layer"] == 2
    assert rift["context_below"]["n"] == 3 and rift["context_below"]["k"] == 1
    assert rift["context_above_without_writers"]["n"] == 0
    assert rift["writers"]["share_second_half"] == 1.0
    hs = flow.head_sources(tr)
    assert set(hs["majority"]) <= set(flow.PARTS)
    hc = flow.head_context(tr).set_index(["layer", "head"])
    assert hc.loc[(3, 0), "p_context"] == 1.0 and hc.loc[(0, 1), "p_context"] == 0.0


def test_part_bounds_follow_prompt_parts(tiny_llama):
    tok = tiny_llama.tokenizer
    prompt = "### Input:\nMax is wumpus.\n### Response:\nMax is wumpus.\n\n### Input:\nRex is yumpus.\n### Response:\n"
    text = prompt + "Rex is"
    ids = tok(text, add_special_tokens=False).input_ids
    a, b = flow.part_bounds(tok, ids, text, prompt, "Rex is yumpus.")
    assert tok.decode(ids[:a]) == prompt[:prompt.rfind("\n\n") + 2]
    assert tok.decode(ids[b:]) == "Rex is"
    assert [flow.part_of(i, (a, b)) for i in (0, a, b)] == list(flow.PARTS)
    with pytest.raises(ValueError, match="not found"):
        flow.part_bounds(tok, ids, text, prompt, "Sam is dumpus.")


def test_important_mask_from_ranking():
    import pandas as pd

    df = pd.DataFrame({"subtask": [0, 0, 0, 1], "layer": [0, 1, 2, 3], "head": [1, 0, 1, 0],
                       "score": [0.9, 0.1, 0.5, 2.0]})
    m = flow.important_mask(df, 4, 2, top_k=2, subtask=0)
    assert m.sum() == 2 and m[0, 1] and m[2, 1]
    with pytest.raises(ValueError, match="score"):
        flow.important_mask(df.drop(columns="score"), 4, 2, 2)


def test_no_pairs_writes_empty_outputs(tmp_path):
    s = flow.write_outputs([], tmp_path, meta={"model": "m"})
    assert s["n_traces"] == 0 and (tmp_path / "summary.json").exists() and (tmp_path / "depth_maps.parquet").exists()


def _reference_trace(scorer, pos, token, cfg):
    """The depth-first-per-item search as first written: one probs / lens call at a time (no prefetch, no batching)."""
    nodes, frontier = [], [(pos, token, scorer.acts.z.shape[0], -1, 0)]
    while frontier:
        nxt = []
        for q_pos, t, below, parent, depth in frontier:
            if below <= 0 or depth > cfg.max_depth:
                continue
            l_d, k_d, p_d = cfg.at_depth(depth)
            pr = scorer.probs(q_pos, t, below)
            vals, idx = torch.topk(torch.nan_to_num(pr, nan=-1.0).reshape(-1), min(l_d, pr.numel()))
            for val, i in zip(vals.tolist(), idx.tolist()):
                if val < 0 or val < cfg.min_prob:
                    continue
                layer, head = divmod(i, pr.shape[1])
                node = {"id": len(nodes), "parent": parent, "depth": depth, "layer": layer, "head": head,
                        "pos": q_pos, "token": int(t), "text": str(t), "prob": float(val), "reads": []}
                nodes.append(node)
                row = scorer.acts.attn[layer, head, q_pos, :q_pos + 1]
                for k_pos, a in flow._above_median_top(row, k_d, exclude=(0,) if cfg.skip_first and q_pos > 0 else ()):
                    read = {"pos": k_pos, "attn": a, "tokens": []}
                    if layer > 0:
                        for tok, pv in flow._above_median_top(scorer.lens(layer, k_pos), p_d):
                            read["tokens"].append({"id": tok, "text": str(tok), "prob": pv})
                            nxt.append((k_pos, tok, layer, node["id"], depth + 1))
                    node["reads"].append(read)
        frontier = nxt
    return nodes


def _same_nodes(a, b):
    """Same nodes, order, ids, parents, heads, positions, reads and tokens; probabilities equal up to float32
    rounding (a BLAS product of several rows need not round like a product of one)."""
    def strip(nodes):
        return [{**n, "prob": None, "reads": [{**r, "tokens": [{**t, "prob": None} for t in r["tokens"]]}
                                              for r in n["reads"]]} for n in nodes]

    def probs(nodes):
        return [n["prob"] for n in nodes] + [t["prob"] for n in nodes for r in n["reads"] for t in r["tokens"]]

    assert strip(a) == strip(b)
    assert probs(a) == pytest.approx(probs(b), rel=1e-5, abs=1e-9)


@pytest.fixture(scope="module")
def deep_model():
    """8-layer random tiny-llama and a 24-token input on which the search runs 5 levels deep."""
    m = load_model("random:tiny-llama?num_hidden_layers=8&seed=5", dtype="float32", device="cpu")
    ids = torch.randint(10, 500, (24,), generator=torch.Generator().manual_seed(2)).tolist()
    return m, ids, flow.capture(m, ids)


@pytest.mark.parametrize("cfg", [flow.FlowConfig(l=4, k=2, p=2, decay=1),
                                 flow.FlowConfig(l=4, k=2, p=2, decay=1, prefilter=3, max_depth=3)])
def test_batched_trace_equals_one_call_at_a_time_reference(deep_model, cfg):
    """trace / trace_many compute each depth level's normalisers and lens distributions together (and share them
    across traces); the nodes are those of the one-call-at-a-time search, with far fewer unembedding matmuls."""
    m, ids, acts = deep_model
    starts = [(23, ids[5]), (15, ids[3]), (23, ids[20])]
    ref_scorer = flow.WriterScorer(m, acts, prefilter=cfg.prefilter)
    refs = [_reference_trace(ref_scorer, pos, tok, cfg) for pos, tok in starts]
    assert sum(map(len, refs)) > 100 and max(n["depth"] for r in refs for n in r) >= 3  # a real multi-level search
    scorer = flow.WriterScorer(m, acts, prefilter=cfg.prefilter)
    assert scorer.chunk == flow.CHUNK_BYTES // (4 * m.vocab_size)
    many = flow.trace_many(scorer, starts, cfg)
    for nodes, ref in zip(many, refs):
        _same_nodes(nodes, ref)
    # at most one normaliser and one lens matmul per depth level (one chunk holds every row at this vocabulary)
    n_levels = max(n["depth"] for r in refs for n in r) + 1
    assert scorer.n_matmuls <= 2 * n_levels < ref_scorer.n_matmuls // 10
    assert scorer.n_lse == ref_scorer.n_lse  # the same normalisers, each computed once
    # one trace at a time, in chunks of 7 rows: the same nodes; a repeated trace reuses every cached result
    small = flow.WriterScorer(m, acts, prefilter=cfg.prefilter, chunk=7)
    for (pos, tok), ref in zip(starts, refs):
        _same_nodes(flow.trace(small, pos, tok, cfg), ref)
    assert small.n_matmuls >= (small.n_lse + small.n_lens) / 7
    before = small.n_matmuls
    _same_nodes(flow.trace(small, *starts[1], cfg), refs[1])
    assert small.n_matmuls == before
    # lens_top is the top-p (above the median) of lens()
    for layer, pos, p in [(3, 7, 1), (5, 20, 3), (1, 0, 2)]:
        assert small.lens_top([(layer, pos, p)])[0] == flow._above_median_top(small.lens(layer, pos), p)


def test_trace_example_traces_pairs_sharing_a_forward_together(deep_model):
    """trace_example: pairs whose inputs are prefixes of one another share one capture, pairs with the same
    important-head mask share one scorer and are traced together; records come out in subtask order, each with
    the nodes of a separate trace."""
    m, ids, acts = deep_model
    cfg = flow.FlowConfig(l=3, k=1, p=2, decay=1)
    pairs = [{"pair_id": f"e-{k}", "example_id": "e", "subtask": k, "clean_ids": ids[:n], "answer_id": ids[a]}
             for k, n, a in [(2, 24, 20), (0, 16, 3), (1, 24, 5)]]
    half = torch.zeros(m.n_layers, m.n_heads, dtype=torch.bool)
    half[:, :2] = True
    masks = {0: half, 1: None, 2: half}
    recs = flow.trace_example(m, pairs, cfg, important=lambda k: masks[k])
    assert [r["pair_id"] for r in recs] == ["e-0", "e-1", "e-2"]
    for r, p in zip(recs, sorted(pairs, key=lambda q: q["subtask"])):
        ref = _reference_trace(flow.WriterScorer(m, acts, masks[p["subtask"]]), len(p["clean_ids"]) - 1,
                               p["answer_id"], cfg)
        _same_nodes([{k: v for k, v in n.items() if k != "in_context"} for n in r["nodes"]],
                    [{**n, "text": m.tokenizer.decode([n["token"]]),
                      "reads": [{**rd, "part": None, "tokens": [{**t, "text": m.tokenizer.decode([t["id"]])}
                                                               for t in rd["tokens"]]} for rd in n["reads"]]}
                     for n in ref])
        if masks[p["subtask"]] is not None:
            assert all(n["head"] < 2 for n in r["nodes"])
