import torch

from cotmech.batching import last_logits, left_pad


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
