import torch

from cotmech.batching import by_length, last_logits, left_pad


def test_left_padding_with_mask_matches_unpadded(tiny_model):
    tok = tiny_model.tokenizer
    texts = ["Max is a wumpus. Wumpuses are dumpuses.", "Rex is a yumpus.", "Each jompus is fast. Sam is a jompus."]
    seqs = [tok(t).input_ids for t in texts]
    batch = left_pad(seqs, tok.pad_token_id)
    assert batch.input_ids.shape == (3, max(map(len, seqs)))
    padded = last_logits(tiny_model, batch)
    for i, s in enumerate(seqs):
        single = last_logits(tiny_model, left_pad([s], tok.pad_token_id))
        torch.testing.assert_close(padded[i], single[0], atol=1e-4, rtol=1e-4)


def test_by_length_groups_equal_lengths():
    seqs = [[1, 2], [3], [4, 5], [6], [7, 8, 9]]
    groups = list(by_length(seqs, max_batch=1))
    assert sorted(i for g in groups for i in g) == list(range(5))
    for g in by_length(seqs, max_batch=8):
        assert len({len(seqs[i]) for i in g}) == 1
