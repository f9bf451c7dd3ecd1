"""Shared fixtures: tiny random models of several shapes and the real data fixtures in ../shared."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

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
