"""Shared fixtures: tiny random models of several shapes and the real data fixtures in ../shared."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from tqdm import tqdm

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """../shared/fixtures (see its README); tests that need it skip cleanly when it is absent."""
    if not SHARED_FIXTURES.is_dir():
        pytest.skip(f"shared fixtures not found at {SHARED_FIXTURES}")
    return SHARED_FIXTURES


def _tiny(preset: str):
    from cotmech.models import load_model

    return load_model(f"random:{preset}", dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def tiny_llama():
    """4 layers × 4 heads, MHA, fp32, with the task BPE tokenizer."""
    return _tiny("tiny-llama")


@pytest.fixture(scope="session")
def tiny_qwen2():
    """4 layers × 4 heads with 2 KV heads (grouped-query attention, like Qwen2.5)."""
    return _tiny("tiny-qwen2")


@pytest.fixture(scope="session", params=["tiny-llama", "tiny-qwen2"])
def tiny_model(request):
    """Parametrised over MHA and GQA shapes."""
    return _tiny(request.param)


# --------------------------------------------------------------------------------------------------
# Residual capture (nnsight), a test helper: the lens and role tests read residuals at every position with it
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def capture_resid(model: Any, seqs: list[list[int]], last_n: int | None = 1, batch_size: int = 4,
                  progress: str | None = None) -> list[torch.Tensor]:
    """Residual stream before the final norm at the last ``last_n`` positions (None = all) of each sequence.

    Returns one float32 CPU tensor [P_i, L+1, d_model] per sequence: index 0 = block 0's input
    (embeddings), index ℓ+1 = block ℓ's output. Sequences are left-padded with a mask (cotmech.batching).
    """
    from cotmech.batching import chunks, left_pad

    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    out: list[torch.Tensor] = []
    for idx in tqdm(list(chunks(list(range(len(seqs))), batch_size)), desc=progress, disable=progress is None,
                    leave=False):
        batch = left_pad([seqs[i] for i in idx], pad).to(model.device)
        saved: list[Any] = []
        with model.lm.trace(**batch.kwargs()):
            saved.append(model.layer(0).input.save())
            for i in range(model.n_layers):
                saved.append(model.layer(i).output.save())
        hs = torch.stack([s[0] if isinstance(s, tuple) else s for s in saved], dim=2).float().cpu()  # [B, T, L+1, d]
        for j, length in enumerate(batch.lengths):
            n = length if last_n is None else min(last_n, length)
            out.append(hs[j, hs.shape[1] - n:])
    return out
