"""model.bf16_matmul: a bf16 model's linear layers multiplied in float32 (cotmech.models.float32_linears) give
torch's bf16 results up to the order of the fp32 sums, keep hooks and nnsight edits working, and are chosen only
where they help (a CPU without bf16 matrix units, memory to spare)."""
import pytest
import torch

from cotmech import models
from cotmech.models import (
    ModelSpecError,
    float32_linears,
    load_from_settings,
    load_model,
    mem_available,
    resolve_bf16_matmul,
)

CPU = torch.device("cpu")


def _ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance in bf16 units in the last place (same-sign values; bf16 bit patterns are ordered like ints)."""
    ia, ib = a.view(torch.int16).int(), b.view(torch.int16).int()
    return (ia - ib).abs()


def _linear(k: int, n: int, bias: bool, gen: torch.Generator, integer: bool) -> torch.nn.Linear:
    lin = torch.nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        for p in lin.parameters():
            p.copy_(torch.randint(-8, 9, p.shape, generator=gen).float() if integer
                    else torch.randn(p.shape, generator=gen))
    return lin.to(torch.bfloat16)


def test_float32_linear_equals_the_bf16_product_where_sums_are_exact():
    """Small integers: every product and fp32 sum is exact, so the float32 path, torch's bf16 kernel and the
    float64 product rounded to bf16 must agree bit for bit (round to nearest even of the same exact value)."""
    gen = torch.Generator().manual_seed(0)
    lin = _linear(64, 48, True, gen, integer=True)
    x = torch.randint(-8, 9, (3, 5, 64), generator=gen).to(torch.bfloat16)
    oracle = (x.double() @ lin.weight.double().T + lin.bias.double()).float().to(torch.bfloat16)
    with torch.no_grad():
        native = lin(x)
        assert float32_linears(torch.nn.Sequential(lin)) == 1
        fast = lin(x)
    assert fast.dtype == torch.bfloat16 and fast.shape == (3, 5, 48)
    exact = x.double() @ lin.weight.double().T + lin.bias.double()
    assert (oracle.double() != exact).any()  # sums beyond 256 are rounded: the comparison sees bf16 rounding
    assert torch.equal(fast, oracle)
    assert torch.equal(native, oracle)
    assert lin.forward.__func__ is models._float32_linear
    lin.weight_f32 = torch.zeros_like(lin.weight_f32)  # the float32 copy is what multiplies
    with torch.no_grad():
        assert torch.equal(lin(x), lin.bias.expand(3, 5, 48))


def test_float32_linear_within_one_ulp_of_the_rounded_exact_product():
    """Random values: the float32 path is the exact product rounded to bf16 up to fp32 summation order (at most 1
    bf16 ulp off, almost always 0), like torch's own bf16 kernel."""
    gen = torch.Generator().manual_seed(1)
    lin = _linear(256, 96, False, gen, integer=False)
    x = torch.randn(4, 7, 256, generator=gen).to(torch.bfloat16)
    exact = x.double() @ lin.weight.double().T
    with torch.no_grad():
        native = lin(x)
        float32_linears(lin)
        fast = lin(x)
    oracle = exact.float().to(torch.bfloat16)
    keep = exact.abs() > 1e-3  # near-zero sums: cancellation makes ulps meaningless
    assert _ulps(fast, oracle)[keep].max() <= 1 and (_ulps(fast, oracle)[keep] == 0).float().mean() > 0.97
    assert _ulps(native, oracle)[keep].max() <= 1
    assert (fast.double() - exact).abs().max() <= (native.double() - exact).abs().max() * 1.01 + 1e-6


def test_model_with_float32_linears_keeps_hooks_and_edits():
    """A bf16 tiny model loaded with bf16_matmul float32: logits within bf16 rounding of the native model's, every
    linear changed, forward pre-hooks on o_proj still act, and an nnsight trace still reads and edits z."""
    from cotmech.tracing import Edit, run_trace

    spec = "random:tiny-llama?seed=3"
    native = load_model(spec, dtype="bfloat16", device="cpu", bf16_matmul="native")
    fast = load_model(spec, dtype="bfloat16", device="cpu", bf16_matmul="float32")
    assert native.info["bf16_matmul"] == "native" and fast.info["bf16_matmul"] == "float32"
    lins = [m for m in fast.hf.modules() if isinstance(m, torch.nn.Linear)]
    assert lins and all(m.weight.dtype == torch.bfloat16 and m.weight_f32.dtype == torch.float32 for m in lins)
    assert not any(hasattr(m, "weight_f32") for m in native.hf.modules())
    ids = torch.tensor([[5, 17, 99, 3, 250, 41, 7, 8]])
    with torch.no_grad():
        a = native.hf(input_ids=ids).logits.float()
        b = fast.hf(input_ids=ids).logits.float()
    assert (a - b).abs().max() <= 0.02 * a.abs().max()
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.75

    def zero(mod, args):  # ablates every head of the layer, as circuits' z hooks do
        return (torch.zeros_like(args[0]),) + tuple(args[1:])
    h = fast.hf_o_proj(1).register_forward_pre_hook(zero)
    with torch.no_grad():
        c = fast.hf(input_ids=ids).logits.float()
    h.remove()
    assert (c - b).abs().max() > 0.05

    mask = torch.zeros(1, fast.n_heads, dtype=torch.bool)
    mask[0, 2] = True
    for m in (native, fast):
        plain = run_trace(m, ids, save=[("z", 1)])
        edited = run_trace(m, ids, edits=[Edit("z", 1, mask, torch.zeros_like(plain.saved[("z", 1)]))],
                           save=[("z", 1)])
        assert torch.all(edited.saved[("z", 1)][:, :, 2] == 0)
        assert torch.equal(edited.saved[("z", 1)][:, :, :2], plain.saved[("z", 1)][:, :, :2])
        assert (edited.logits - plain.logits).abs().max() > 0
    za = run_trace(native, ids, save=[("z", 1)]).saved[("z", 1)].float()
    zb = run_trace(fast, ids, save=[("z", 1)]).saved[("z", 1)].float()
    assert (za - zb).abs().max() <= 0.02 * za.abs().max()


def test_float32_linears_only_touch_bf16_layers():
    lin32 = torch.nn.Linear(4, 3)
    seq = torch.nn.Sequential(lin32, torch.nn.Linear(3, 2).to(torch.bfloat16))
    assert float32_linears(seq) == 1
    assert not hasattr(lin32, "weight_f32") and seq[1].forward.__func__ is models._float32_linear


@pytest.mark.parametrize("mode, dtype, device, native_bf16, available, want", [
    ("auto", torch.bfloat16, CPU, False, 100, "float32"),  # no bf16 matrix units, copies fit
    ("auto", torch.bfloat16, CPU, False, None, "float32"),  # memory unknown
    ("auto", torch.bfloat16, CPU, False, 79, "native"),  # copies (40) over half of the available memory
    ("auto", torch.bfloat16, CPU, True, 100, "native"),  # AMX / Arm BF16: torch's bf16 kernels are faster
    ("auto", torch.float32, CPU, False, 100, "native"),  # not a bf16 model
    ("auto", torch.bfloat16, torch.device("cuda"), False, 100, "native"),
    ("float32", torch.bfloat16, CPU, True, 1, "float32"),  # asked for
    ("float32", torch.float16, CPU, False, 100, "native"),  # only bf16 models
    ("native", torch.bfloat16, CPU, False, 100, "native"),
])
def test_resolve_bf16_matmul(mode, dtype, device, native_bf16, available, want, monkeypatch):
    monkeypatch.setattr(models, "mem_available", lambda: None)
    assert resolve_bf16_matmul(mode, dtype, device, 40, native_bf16=native_bf16,
                               available=available) == want


def test_resolve_bf16_matmul_reads_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    assert resolve_bf16_matmul("auto", torch.bfloat16, CPU, 40, available=100) == "native"
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: False)
    assert resolve_bf16_matmul("auto", torch.bfloat16, CPU, 40, available=100) == "float32"


def test_bad_bf16_matmul_is_named():
    with pytest.raises(ModelSpecError, match="bf16_matmul 'fp8'"):
        resolve_bf16_matmul("fp8", torch.bfloat16, CPU, 1)
    with pytest.raises(ModelSpecError, match="bf16_matmul 'fp8'"):
        load_model("random:tiny-llama", dtype="bfloat16", device="cpu", bf16_matmul="fp8")


def test_mem_available_parses_meminfo_and_the_cgroup_limit(tmp_path):
    text = "MemTotal:       24576000 kB\nMemFree:         1000 kB\nMemAvailable:   20000000 kB\n"
    assert mem_available(text, cgroup=None) == 20000000 * 1024
    assert mem_available("MemTotal: 1 kB\n", cgroup=None) is None
    (tmp_path / "memory.max").write_text("max\n")
    assert mem_available(text, cgroup=tmp_path) == 20000000 * 1024  # no limit
    (tmp_path / "memory.max").write_text(f"{8 * 2**30}\n")  # a job of 8 GiB that holds 3 GiB
    (tmp_path / "memory.current").write_text(f"{3 * 2**30}\n")
    assert mem_available(text, cgroup=tmp_path) == 5 * 2**30
    assert mem_available("", cgroup=tmp_path) == 5 * 2**30


def test_settings_and_cli_pass_bf16_matmul():
    """config model.bf16_matmul (schema default auto) reaches load_model; --bf16-matmul overrides it."""
    import argparse

    from cotmech import config
    from cotmech.cli import add_model_args, load_from_args

    assert config.fill({"spec": "random:tiny-llama"}, config.node("model"))["bf16_matmul"] == "auto"
    m = load_from_settings({"model": {"spec": "random:tiny-llama", "dtype": "bfloat16", "device": "cpu",
                                      "bf16_matmul": "float32"}})
    assert m.info["bf16_matmul"] == "float32"
    ap = argparse.ArgumentParser()
    add_model_args(ap, overrides=True)
    args = ap.parse_args(["--bf16-matmul", "native", "--dtype", "bfloat16"])
    m = load_from_args(args, {"model": {"spec": "random:tiny-llama", "device": "cpu", "bf16_matmul": "float32"}})
    assert m.info["bf16_matmul"] == "native" and m.dtype == torch.bfloat16
