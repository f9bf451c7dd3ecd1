"""Head-level patching (study.md E2, E3, §5): one generic nnsight patcher and the methods built on it.

- :mod:`cotmech.tracing` (shared with the knockout) :func:`run_trace` — one traced forward with per-head edits
                    (z, q, k, v), prefix KV cache, layer skipping; :func:`run_in_batches` (out-of-memory back-off)
- :mod:`.metrics`   KL (paper), logit difference, answer probability; one normalisation
- :mod:`.exact`     ``naive_sweep`` (reference) and ``exact_sweep`` (same numbers, suffix-only) -> PatchResult
- :mod:`.atp`       attribution patching
- :mod:`.screen`    exact patching of the heads AtP ranks first, until the exact top-k is settled
- :mod:`.path`      path patching (sender -> logits / receivers' q, k, v)
- :mod:`.induction` E3 cloze task and its three corruptions
- :mod:`.scores`    head tables with bootstrap CIs, heat-maps, AtP-vs-exact Spearman (results, raw shards and
                    their aggregate: :mod:`cotmech.patch_results`)
"""
from ..patch_results import PatchResult, aggregate
from ..tracing import Edit, PrefixCache, TraceOut, prefix_cache, run_in_batches, run_trace
from .atp import atp_sweep
from .data import Pair, load_pairs, make_pair, pair_from_record
from .exact import exact_sweep, naive_sweep
from .metrics import METRICS, PairRef, get_metric
from .path import path_patch, path_table, pick_heads
from .scores import score_table

__all__ = ["Edit", "METRICS", "Pair", "PairRef", "PatchResult", "PrefixCache", "TraceOut", "aggregate", "atp_sweep",
           "exact_sweep", "get_metric", "load_pairs", "make_pair", "naive_sweep", "pair_from_record", "path_patch",
           "path_table", "pick_heads", "prefix_cache", "run_in_batches", "run_trace", "score_table"]
