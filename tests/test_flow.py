"""Information-flow tracing (study.md E9) on a hand-built tiny model whose copying path is known."""
from __future__ import annotations

import math

import numpy as np
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
    cfg = flow.FlowConfig(l=3, k=1, p=2, decay=1, start="answer")
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
        assert r["start_id"] == p["answer_id"] and not r["pruned"]
    # the default start is the (unablated) model's argmax at each pair's predicting position
    with torch.no_grad():
        logits = m.hf(torch.tensor([ids])).logits[0]
    recs = flow.trace_example(m, pairs, flow.FlowConfig(l=3, k=1, p=2, decay=1))
    assert [r["start_id"] for r in recs] == [int(logits[len(p["clean_ids"]) - 1].argmax())
                                            for p in sorted(pairs, key=lambda q: q["subtask"])]


# --------------------------------------------------------------------------------------------------
# The pruned model state (study.md E9): heads outside the knockout circuit mean-ablated
def _hooked_pruned_forward(m, ids, kept, means):
    """Oracle independent of nnsight: plain PyTorch pre-hooks on each o_proj replace the removed heads' z by
    the means at each position (``means.left_padded``: end-aligned, start-aligned over ``means.prefix_len``, as
    tested against an explicit loop in tests/test_circuits.py); returns (hidden states entering each layer
    [L, S, D], argmax at every position [S],
    o_proj inputs [L, S, H*dh])."""
    S, dh = len(ids), m.d_head
    z_in, handles = {}, []
    for i, layer in enumerate(m.hf.model.layers):
        def pre(mod, args, i=i):
            z = args[0].clone()
            for h in range(m.n_heads):
                if not kept[i, h]:
                    z[0, :, h * dh:(h + 1) * dh] = means.left_padded(i, [S], S)[0, :, h * dh:(h + 1) * dh].to(z.dtype)
            z_in[i] = z.detach().clone()
            return (z,) + tuple(args[1:])
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            out = m.hf(torch.tensor([ids]), output_hidden_states=True)
    finally:
        for hd in handles:
            hd.remove()
    hidden = torch.stack([out.hidden_states[i][0] for i in range(m.n_layers)])
    return hidden, out.logits[0].argmax(-1), torch.stack([z_in[i][0] for i in range(m.n_layers)])


def _circuit(m, seed=0, prefix_len=0):
    from cotmech.ablation import head_means

    g = torch.Generator().manual_seed(seed)
    refs = [torch.randint(10, 400, (n,), generator=g).tolist() for n in (9, 14, 20)]
    kept = torch.rand(m.n_layers, m.n_heads, generator=g) < 0.5
    kept[m.n_layers - 1, 0] = True  # at least one writer candidate in the last layer
    return flow.Circuit(kept, head_means(m, refs, batch_size=2, prefix_len=prefix_len))


@pytest.mark.parametrize("prefix_len", [0, 6])  # end-aligned means; segment-aligned (circuits.mean_alignment)
def test_pruned_capture_equals_a_hooked_mean_ablated_forward(tiny_model, prefix_len):
    """capture(..., circuit): z of removed heads = their reference means, every layer's resid_pre and the argmax
    at every position = a plain-PyTorch forward with those heads mean-ablated (and = the knockout's ablated argmax)."""
    from cotmech.batching import left_pad
    from cotmech.circuits import ablated_last_logits

    m = tiny_model
    c = _circuit(m, prefix_len=prefix_len)
    assert c.means.prefix_len == prefix_len
    ids = torch.randint(10, 400, (17,), generator=torch.Generator().manual_seed(4)).tolist()  # longer than refs
    acts = flow.capture(m, ids, c)
    hidden, argmax, z = _hooked_pruned_forward(m, ids, c.kept, c.means)
    torch.testing.assert_close(acts.resid, hidden, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(acts.z.flatten(2), z, atol=1e-5, rtol=1e-4)
    assert torch.equal(acts.argmax, argmax)
    removed = [(layer, h) for layer in range(m.n_layers) for h in range(m.n_heads) if not c.kept[layer, h]]
    knock = ablated_last_logits(m, left_pad([ids], m.tokenizer.pad_token_id), c.means, removed)
    assert int(acts.argmax[-1]) == int(knock.argmax(-1)[0])
    # the ablation changes the model: later layers differ from the unablated capture
    full = flow.capture(m, ids)
    assert not torch.allclose(full.resid[-1], acts.resid[-1], atol=1e-4)
    torch.testing.assert_close(full.resid[0], acts.resid[0])  # the embeddings are untouched


def test_pruned_trace_starts_from_the_pruned_argmax_and_visits_circuit_heads_only(deep_model):
    """trace_example with a circuit: one pruned forward per pair; the trace is the one-call-at-a-time search on the
    pruned activations, from the pruned model's argmax, over circuit heads only; records say so."""
    m, ids, _ = deep_model
    circ = {0: _circuit(m, seed=1), 1: _circuit(m, seed=2)}
    assert not torch.equal(circ[0].kept, circ[1].kept)
    cfg = flow.FlowConfig(l=3, k=1, p=2, decay=1)
    pairs = [{"pair_id": f"e-{k}", "example_id": "e", "subtask": k, "clean_ids": ids[:n], "answer_id": ids[a]}
             for k, n, a in [(1, 24, 20), (0, 16, 3)]]
    recs = flow.trace_example(m, pairs, cfg, circuit=circ.__getitem__)
    assert [r["pair_id"] for r in recs] == ["e-0", "e-1"]
    for r, p in zip(recs, sorted(pairs, key=lambda q: q["subtask"])):
        c, n = circ[p["subtask"]], len(p["clean_ids"])
        _, argmax, _ = _hooked_pruned_forward(m, p["clean_ids"], c.kept, c.means)
        assert r["start_id"] == r["argmax_id"] == int(argmax[-1]) and r["pruned"]
        assert r["n_circuit_heads"] == int(c.kept.sum())
        assert r["nodes"] and all(c.kept[nd["layer"], nd["head"]] for nd in r["nodes"])
        ref = _reference_trace(flow.WriterScorer(m, flow.capture(m, p["clean_ids"], c), c.kept), n - 1,
                               int(argmax[-1]), cfg)
        _same_nodes([{k: v for k, v in nd.items() if k != "in_context"} for nd in r["nodes"]],
                    [{**nd, "text": m.tokenizer.decode([nd["token"]]),
                      "reads": [{**rd, "part": None, "tokens": [{**t, "text": m.tokenizer.decode([t["id"]])}
                                                               for t in rd["tokens"]]} for rd in nd["reads"]]}
                     for nd in ref])
    # start: "answer" starts from the gold token instead
    gold = flow.trace_example(m, pairs[1:], flow.FlowConfig(l=3, k=1, p=2, start="answer"), circuit=circ.__getitem__)
    assert gold[0]["start_id"] == pairs[1]["answer_id"] and gold[0]["nodes"][0]["token"] == pairs[1]["answer_id"]


def test_circuits_are_read_from_the_knockout_heads_table(tiny_llama):
    """load_circuits takes the kept set at the operating point of the named ranking (scope as circuit_sets);
    pruned_circuits adds the head means of the subtask's reference pairs and names a subtask without circuit."""
    import pandas as pd

    from cotmech.ablation import head_means

    rows = []
    for k, kept in ((0, {(0, 1), (3, 2)}), (5, {(2, 0)})):
        for scope in ("rank_split", "eval_split"):
            for r, (layer, h) in enumerate((layer, h) for layer in range(4) for h in range(4)):
                keep = (layer, h) in kept if scope == "rank_split" else (layer, h) == (1, 1)
                rows.append(dict(subtask=k, ranking="induction", scope=scope, layer=layer, head=h, removal_rank=r,
                                 kept=keep))
    rows += [dict(subtask=0, ranking="direct", scope="rank_split", layer=1, head=3, removal_rank=0, kept=True)]
    heads = pd.DataFrame(rows)
    masks = flow.load_circuits(heads, "induction", 4, 4)
    assert sorted(masks) == [0, 5]
    assert {tuple(x) for x in torch.nonzero(masks[0]).tolist()} == {(0, 1), (3, 2)}
    assert {tuple(x) for x in torch.nonzero(masks[5]).tolist()} == {(2, 0)}
    ids = [list(range(10 + i, 22 + i)) for i in range(3)]
    ref = [{"pair_id": f"r{i}", "subtask": k, "clean_ids": s} for i, s in enumerate(ids) for k in (0, 5)]
    got = flow.pruned_circuits(tiny_llama, heads, "induction", ref, [0], n_reference=None, seed=1, batch_size=2)
    want = head_means(tiny_llama, ids, batch_size=3)
    torch.testing.assert_close(got[0].means.by_end, want.by_end, atol=1e-5, rtol=1e-4)
    assert torch.equal(got[0].kept, masks[0])
    with pytest.raises(ValueError, match="no knockout circuit for subtask 3"):
        flow.pruned_circuits(tiny_llama, heads, "induction", ref, [3])
    with pytest.raises(ValueError, match="lacks column 'kept'"):
        flow.load_circuits(heads.drop(columns="kept"), "induction", 4, 4)


# --------------------------------------------------------------------------------------------------
# The paper-comparable rift headline (E10): trace statistic, split at L/2, crossing of 0.5, cluster bootstrap
def _planted_traces(n_ex=12, L=8, cross=5, seed=0):
    """Traces whose carried tokens are in context with probability 0.15 below layer ``cross`` and 0.85 from it on;
    examples carry different numbers of traces and nodes (so a row bootstrap would differ from a cluster one)."""
    rng = np.random.default_rng(seed)
    out = []
    for e in range(n_ex):
        for t in range(1 + e % 3):
            nodes = []
            for i in range(int(rng.integers(3, 12))):
                layer = int(rng.integers(0, L))
                depth = 0 if i == 0 else 1 + int(rng.integers(0, 3))
                nodes.append({"id": i, "parent": -1 if i == 0 else 0, "depth": depth, "layer": layer, "head": 0,
                              "pos": 3, "token": 1, "text": "x", "prob": 0.5, "reads": [],
                              "in_context": bool(rng.random() < (0.85 if layer >= cross else 0.15))})
            out.append({"pair_id": f"e{e}-k{t}", "example_id": f"e{e}", "subtask": t, "n_layers": L, "n_heads": 2,
                        "nodes": nodes})
    return out


def _loop_stats(traces, L, split):
    """Explicit loops over the traces: per-layer share (writers = context), pooled below/above, without writers,
    writers' share in the second half."""
    n, k = [0] * L, [0] * L
    below, above, below_wo, above_wo, wr = [0, 0], [0, 0], [0, 0], [0, 0], [0, 0]
    for t in traces:
        for nd in t["nodes"]:
            c = 1 if nd["depth"] == 0 or nd["in_context"] else 0
            n[nd["layer"]] += 1
            k[nd["layer"]] += c
            side = above if nd["layer"] >= split else below
            side[0] += 1
            side[1] += c
            if nd["depth"] > 0:
                side = above_wo if nd["layer"] >= split else below_wo
                side[0] += 1
                side[1] += int(nd["in_context"])
            else:
                wr[0] += 1
                wr[1] += int(nd["layer"] >= split)
    share = [k[i] / n[i] if n[i] else float("nan") for i in range(L)]
    return share, below[1] / below[0], above[1] / above[0], above_wo[1] / above_wo[0], wr[1] / wr[0]


def test_crossing_layer_on_synthetic_curves():
    nan = float("nan")
    assert flow.crossing_layer([0.1, 0.3, nan, 0.6, 0.4, 0.9]) == 3  # first layer at or above 0.5, NaN skipped
    assert flow.crossing_layer([0.1, 0.5, 0.2]) == 1
    assert flow.crossing_layer([0.1, 0.49, nan]) is None
    assert flow.crossing_layer([nan, 0.7, 0.1], level=0.8) is None


def test_trace_rift_headline_against_an_explicit_example_bootstrap_loop():
    from cotmech.prior_shift import bootstrap_weights

    L, B, seed = 8, 300, 11
    tr = _planted_traces(L=L, cross=5)
    s = flow.rift_summary(tr, n_boot=B, seed=seed, ci=0.9)
    share, below, above, above_wo, writers = _loop_stats(tr, L, L // 2)
    assert s["split_layer"] == 4 and s["n_examples"] == 12
    assert s["context_by_layer"] == pytest.approx(share)
    assert s["context_below"]["share"] == pytest.approx(below)
    assert s["context_above"]["share"] == pytest.approx(above)
    assert s["context_above_without_writers"]["share"] == pytest.approx(above_wo)
    assert s["writers"]["share_second_half"] == pytest.approx(writers)
    assert s["crossing"]["layer"] == 5 == next(i for i, v in enumerate(share) if v >= 0.5)
    # the CI: resample *examples* (every trace of a drawn example, as often as it is drawn), recompute by loops
    examples = sorted({t["example_id"] for t in tr}, key=lambda e: int(e[1:]))
    _, W = bootstrap_weights(np.arange(len(examples)), B, seed)
    boot = {"below": [], "above": [], "cross": [], "writers": []}
    for w in W:
        sample = [t for e, cnt in zip(examples, w) for _ in range(int(cnt)) for t in tr if t["example_id"] == e]
        sh, b, a, _, wr = _loop_stats(sample, L, L // 2)
        boot["below"].append(b)
        boot["above"].append(a)
        boot["writers"].append(wr)
        boot["cross"].append(next((i for i, v in enumerate(sh) if v == v and v >= 0.5), np.nan))
    for key, got in (("below", s["context_below"]), ("above", s["context_above"]), ("writers", s["writers"])):
        lo, hi = np.quantile(boot[key], [0.05, 0.95])
        assert (got["ci_low"], got["ci_high"]) == pytest.approx((lo, hi)), key
    c = np.array(boot["cross"], float)
    lo, hi = np.quantile(c[np.isfinite(c)], [0.05, 0.95])
    assert (s["crossing"]["ci_low"], s["crossing"]["ci_high"]) == pytest.approx((lo, hi))
    assert s["crossing"]["rel_depth"] == 5 / L
    assert flow.rift_summary(tr, n_boot=B, seed=seed, ci=0.9) == s  # seeded
    ctx = flow.context_by_layer(tr, n_boot=B, seed=seed, ci=0.9)
    assert ctx["share"].tolist() == pytest.approx(share)
    assert (ctx["ci_low"] <= ctx["share"]).all() and (ctx["share"] <= ctx["ci_high"]).all()


#: The fixed circuit (kept heads) per subtask of :func:`_circuit_inputs`' knockout table.
CIRCUIT_KEPT = {0: {(3, 1), (2, 0), (1, 2), (0, 3)}, 1: {(3, 0), (3, 2), (2, 1), (1, 1), (0, 0)}}


def _circuit_inputs(seed: int, n_examples: int, length: int, short: int, answer_pos: int):
    """Random clean pairs (subtask 0 the first ``short`` tokens of an example, subtask 1 all ``length``), reference
    pairs of the same lengths, and a knockout heads table of the tiny 4 x 4 model with a fixed circuit per subtask
    (:data:`CIRCUIT_KEPT`)."""
    import pandas as pd

    g = torch.Generator().manual_seed(seed)
    pairs, ref = [], []
    for e in range(n_examples):
        ids = torch.randint(10, 400, (length,), generator=g).tolist()
        for k, n in ((0, short), (1, length)):
            pairs.append({"pair_id": f"e{e}-k{k}", "example_id": f"e{e}", "subtask": k, "clean_ids": ids[:n],
                          "answer_id": ids[answer_pos]})
            ref.append({"pair_id": f"r{e}-k{k}", "example_id": f"r{e}", "subtask": k,
                        "clean_ids": torch.randint(10, 400, (n,), generator=g).tolist(), "answer_id": 5})
    heads = pd.DataFrame([dict(subtask=k, ranking="induction", scope="rank_split", layer=la, head=h,
                               removal_rank=4 * la + h, kept=(la, h) in CIRCUIT_KEPT[k])
                          for k in (0, 1) for la in range(4) for h in range(4)])
    return pairs, ref, heads


def test_trace_flow_script_traces_the_pruned_circuit_and_names_a_missing_one(tmp_path, capsys):
    """scripts/trace_flow.py with the rule's settings: pruned by default (circuit from a knockout heads table,
    means from the reference pairs), summary and traces say so; a subtask without a circuit is a one-line error
    naming the table; pruned: false traces every head."""
    import importlib.util
    import json
    from pathlib import Path

    from cotmech.io import read_json, read_jsonl, write_jsonl, write_table

    spec = importlib.util.spec_from_file_location("trace_flow", Path(__file__).parents[1] / "scripts" / "trace_flow.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    pairs, ref, heads = _circuit_inputs(seed=7, n_examples=2, length=18, short=12, answer_pos=3)
    kept = CIRCUIT_KEPT
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    write_jsonl(tmp_path / "ref.jsonl", ref)
    write_table(tmp_path / "heads.parquet", heads)
    settings = {"model": {"spec": "random:tiny-llama", "dtype": "float32", "device": "cpu"}, "seed": 3,
                "flow": {"n_examples": 2, "subtasks": None, "pruned": True, "circuit_ranking": "induction",
                         "start": "argmax", "n_boot": 50, "ci": 0.9, "l": 3, "k": 1, "p": 1, "prefilter": None},
                "circuits": {"subtasks": [0, 1], "n_reference": None, "batch_size": 2}}
    args = ["--pairs", str(tmp_path / "pairs.jsonl"), "--circuit-heads", str(tmp_path / "heads.parquet"),
            "--reference", str(tmp_path / "ref.jsonl")]
    assert script.main(args + ["--settings", json.dumps(settings), "--outdir", str(tmp_path / "out")]) == 0
    s = read_json(tmp_path / "out" / "summary.json")
    assert s["pruned"] is True and s["n_traces"] == 4 and s["n_examples"] == 2 and s["n_boot"] == 50
    for tr in read_jsonl(tmp_path / "out" / "traces.jsonl"):
        assert tr["pruned"] and tr["n_circuit_heads"] == len(kept[tr["subtask"]])
        assert tr["nodes"] and {(nd["layer"], nd["head"]) for nd in tr["nodes"]} <= kept[tr["subtask"]]
    # a traced subtask without a circuit
    bad = {**settings, "circuits": {**settings["circuits"], "subtasks": [0, 1, 2]}}
    write_jsonl(tmp_path / "pairs2.jsonl", pairs + [{**pairs[0], "pair_id": "e0-k2", "subtask": 2}])
    args2 = ["--pairs", str(tmp_path / "pairs2.jsonl")] + args[2:]
    capsys.readouterr()
    assert script.main(args2 + ["--settings", json.dumps(bad), "--outdir", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "heads.parquet" in err and "no knockout circuit for subtask 2" in err
    # unpruned: every head eligible, no circuit files needed
    flat = {**settings, "flow": {**settings["flow"], "pruned": False}}
    assert script.main(["--pairs", str(tmp_path / "pairs.jsonl"), "--settings", json.dumps(flat),
                        "--outdir", str(tmp_path / "o3")]) == 0
    s3 = read_json(tmp_path / "o3" / "summary.json")
    assert s3["pruned"] is False and "unpruned" in s3["model_state"]
    assert any((nd["layer"], nd["head"]) not in kept[tr["subtask"]]
               for tr in read_jsonl(tmp_path / "o3" / "traces.jsonl") for nd in tr["nodes"])


def test_important_mask_mean_over_subtasks_and_heads_outside_the_model():
    """Without a usable ``subtask`` the ranking is the mean score over subtasks per (layer, head) — here it picks
    heads that neither subtask alone ranks in its top four — and rows with NaN elsewhere (ci columns) still count;
    heads outside [0, n_layers) x [0, n_heads) are skipped, not wrapped or raised on. Reference: an explicit loop."""
    import pandas as pd

    nan = float("nan")
    rows = [  # subtask, layer, head, score, ci_low
        (0, 0, 0, 1.0, nan), (1, 0, 0, 0.0, 0.1),   # mean 0.5
        (0, 1, 1, 0.4, 0.1), (1, 1, 1, 0.4, 0.1),   # mean 0.4
        (0, 2, 0, 0.9, 0.1), (1, 2, 0, -0.9, 0.1),  # mean 0.0
        (0, 3, 1, 0.0, 0.1), (1, 3, 1, 0.9, 0.1),   # mean 0.45
        (0, 4, 0, 5.0, 0.1), (1, 4, 0, 5.0, 0.1),   # layer 4 = n_layers: outside
        (0, 1, 2, 4.0, 0.1), (1, 1, 2, 4.0, 0.1),   # head 2 = n_heads: outside
    ]
    df = pd.DataFrame(rows, columns=["subtask", "layer", "head", "score", "ci_low"])
    sums: dict = {}
    for _, la, he, sc, _ in rows:
        sums.setdefault((la, he), []).append(sc)
    ranked = sorted(sums, key=lambda k: -np.mean(sums[k]))[:4]
    ref = torch.zeros(4, 2, dtype=torch.bool)
    for la, he in ranked:
        if la < 4 and he < 2:
            ref[la, he] = True
    for sub in (None, 7):  # no subtask given / one absent from the table -> the mean over subtasks
        m = flow.important_mask(df, 4, 2, top_k=4, subtask=sub)
        assert m.dtype == torch.bool and torch.equal(m, ref)
        assert m.nonzero().tolist() == [[0, 0], [3, 1]]  # (4, 0) and (1, 2) took two of the four places
    # a subtask's own scores: subtask 0 ranks (0, 0) (NaN ci_low) and (2, 0); subtask 1 ranks (3, 1) and (1, 1)
    assert flow.important_mask(df, 4, 2, top_k=4, subtask=0).nonzero().tolist() == [[0, 0], [2, 0]]
    assert flow.important_mask(df, 4, 2, top_k=5, subtask=1).nonzero().tolist() == [[0, 0], [1, 1], [3, 1]]


def test_run_equals_the_steps_one_by_one():
    """cotmech.flow.run (the script's entry point) against the steps called one by one: example choice, the
    per-subtask pruned circuits (mean-ablated elsewhere) or a ranking's top-k mask, trace_example per example, then
    every table and the summary (seconds aside)."""
    import pandas as pd

    from cotmech import config

    model = load_model("random:tiny-llama", dtype="float32", device="cpu")
    pairs, ref, heads = _circuit_inputs(seed=11, n_examples=3, length=16, short=11, answer_pos=2)
    kept = CIRCUIT_KEPT
    ranking = pd.DataFrame([dict(subtask=k, layer=la, head=h, score=float((7 * la + 3 * h + k) % 5))
                            for k in (0, 1) for la in range(4) for h in range(4)])
    base = {"n_examples": 2, "subtasks": None, "circuit_ranking": "induction", "start": "argmax", "n_boot": 40,
            "ci": 0.9, "l": 3, "k": 1, "p": 1, "prefilter": None, "top_k": 6}
    cs = config.section({"circuits": {"subtasks": [1], "n_reference": None, "batch_size": 2}}, "circuits")
    names = {"pairs": "P", "circuit_heads": "H", "ranking": "R"}
    for pruned in (True, False):
        fs = config.section({"flow": {**base, "pruned": pruned}}, "flow")
        traces, frames, summary = flow.run(model, pairs, fs, 4, circuits_cfg=cs, heads=heads, reference=ref,
                                           ranking=ranking, alignment=0, names=names, log=lambda m: None)
        fcfg = flow.FlowConfig(l=3, k=1, p=1, prefilter=None, start="argmax")
        # pruned: subtasks from circuits (only 1); unpruned: flow.subtasks None -> all
        chosen = flow.select_examples(pairs, 2, [1] if pruned else None)
        assert list(chosen) == ["e0", "e1"]
        ref_traces = []
        if pruned:
            circ = flow.pruned_circuits(model, heads, "induction", ref, [1], None, 4, 2, 0)
            for ps in chosen.values():
                ref_traces += flow.trace_example(model, ps, fcfg, None, None, circ.__getitem__)
            assert all(tr["subtask"] == 1 and {(n["layer"], n["head"]) for n in tr["nodes"]} <= kept[1]
                       for tr in ref_traces)
        else:
            masks = {k: flow.important_mask(ranking, 4, 4, 6, subtask=k) for k in (0, 1)}
            assert all(int(m.sum()) == 6 for m in masks.values()) and not torch.equal(masks[0], masks[1])
            for ps in chosen.values():
                ref_traces += flow.trace_example(model, ps, fcfg, None, masks.__getitem__, None)
        assert traces == ref_traces and len(traces) == (2 if pruned else 4)
        ref_frames, ref_summary = flow.tables(ref_traces, model.tokenizer, {p["pair_id"]: p for p in pairs},
                                              n_boot=40, seed=4, ci=0.9)
        assert list(frames) == list(flow.TABLES)
        for name in flow.TABLES:
            pd.testing.assert_frame_equal(frames[name], ref_frames[name])
        assert summary.pop("seconds") >= 0
        assert summary["pruned"] is pruned and summary["circuit_heads"] == ("H" if pruned else None)
        assert summary["ranking"] == (None if pruned else "R") and summary["top_k"] == (None if pruned else 6)
        assert summary["argmax_is_answer"] == sum(t["argmax_is_answer"] for t in ref_traces)
        for key in ("model", "pairs", "config", "model_state", "pruned", "circuit_heads", "ranking", "top_k",
                    "argmax_is_answer"):
            summary.pop(key)
        assert summary == ref_summary
    with pytest.raises(ValueError, match="H: .*no knockout circuit for subtask 2"):
        flow.run(model, pairs + [{**pairs[0], "pair_id": "e0-k2", "subtask": 2}],
                 config.section({"flow": {**base, "pruned": True}}, "flow"), 4,
                 circuits_cfg=config.section({"circuits": {"subtasks": [2]}}, "circuits"), heads=heads,
                 reference=ref, names=names, log=lambda m: None)
