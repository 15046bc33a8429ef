"""The CUDA NF4 GEMV (magistral_kit/model/nf4_pair.cu + nf4_cuda.py).

On the CPU (CI): the numpy reference of the kernel's arithmetic against bitsandbytes, the exactness of its
half-precision FMA emulation, the whole decode step computed with that arithmetic against the model's forward,
and the kernel itself compiled by NVRTC for sm_90 and read back from its machine code (two weights per table
load, no register spills). Tests marked ``gpu`` need the GPU and run with ``KIT_TEST_DEVICE=cuda`` (conftest
deselects them otherwise): the kernel against the reference bit for bit, inside a CUDA graph and in the decode
step.
"""
from __future__ import annotations

import ctypes
import fractions
import importlib.util
import os
import re

import numpy as np
import pytest
import torch

from magistral_kit.config import REPO_ROOT
from magistral_kit.model import nf4_cuda as nc
from magistral_kit.model import nf4_kernel as nk

DEVICE = os.environ.get("KIT_TEST_DEVICE", "cpu")
gpu = pytest.mark.gpu


def _lin(n: int, k: int, seed: int) -> nk.NF4Weight:
    from test_nf4_kernel import _Lin

    lin = _Lin(n, k, seed=seed)
    w, why = nk.nf4_weight(lin)
    assert w is not None, why
    w.lin = lin  # the exact fp32 product, for the error checks
    return w


def _x(k: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(k, generator=torch.Generator().manual_seed(seed)) * scale).to(torch.bfloat16).to(DEVICE)


# --------------------------------------------------------------------------------------------------------------
# the reference arithmetic (CPU)
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rows,k,split", [
    ((37,), 2048, 1),  # odd rows
    ((16,), 3072, 3),  # K split in three
    ((64, 16, 16), 1024, 1),  # q|k|v in one product
    ((5,), 4096, 2),  # several steps per split
])
def test_reference_is_within_bitsandbytes_error(rows: tuple[int, ...], k: int, split: int) -> None:
    """Sums of the reference (what the kernel computes) against the exact fp32 product; bitsandbytes' own
    dequantized weight (bf16) sets the bar."""
    ws = [_lin(n, k, seed=n * 7 + i) for i, n in enumerate(rows)]
    x = _x(k, seed=k + split)
    parts = nc.reference_gemv(nk.lane_order(x), ws, split)
    assert parts.shape == (split, sum(rows)) and parts.dtype == np.float32
    y = torch.from_numpy(parts.sum(0))
    exact = torch.cat([w.lin.exact(x) for w in ws]).cpu()
    theirs = torch.cat([w.lin.reference(x) for w in ws]).cpu()
    err = float((y - exact).abs().max())
    bnb_err = float((theirs - exact).abs().max())
    assert 0 < err <= bnb_err, (err, bnb_err)


def test_reference_scales_large_activations_instead_of_overflowing() -> None:
    """Half precision ends at 65504; bf16 activations do not. The kernel scales x down by a power of two when
    max |x| reaches 2^XMAX_EXP, so an activation of 2e5 still gives the right product."""
    w = _lin(32, 2048, seed=3)
    x = _x(2048, seed=1, scale=3e4)
    x[5] = 2e5
    bits = nc._natural(nk.lane_order(x))
    assert nc.x_shift(bits) > 0 and nc.x_shift(nc._natural(nk.lane_order(_x(2048, seed=1)))) == 0
    y = torch.from_numpy(nc.reference_gemv(nk.lane_order(x), [w])[0])
    exact = w.lin.exact(x).cpu()
    assert torch.isfinite(y).all()
    assert float((y - exact).abs().max()) <= 2e-3 * float(exact.abs().max())
    # without the scale the same x overflows half precision: what the scale is for
    with np.errstate(over="ignore"):
        assert not np.isfinite(x.float().cpu().numpy().astype(np.float16)).all()


def _round_half_exact(v: fractions.Fraction) -> np.float16:
    """The fp16 nearest to a rational (ties to even), by exact comparison with its two neighbours."""
    h = np.float16(float(v))
    best = None
    for c in (np.nextafter(h, np.float16(-np.inf)), h, np.nextafter(h, np.float16(np.inf))):
        d = abs(fractions.Fraction(float(c)) - v)
        even = int(np.array(c).view(np.uint16)) % 2 == 0
        if best is None or d < best[0] or (d == best[0] and even):
            best = (d, even, c)
    return best[2]


def test_half_fma_emulation_rounds_once() -> None:
    """The reference's HFMA2 (float64, then one rounding to half) equals the exactly rounded a * b + c, on random
    halves including subnormals and on a case where rounding the product first would differ."""
    rng = np.random.default_rng(0)
    top = np.array([[0x5800], [0x5800], [0x7400]], dtype=np.uint16)  # |a|, |b| < 128, |c| < 16384: no overflow
    bits = (rng.integers(0, 1 << 16, size=(3, 4000)) % top).astype(np.uint16)  # subnormals to large normals
    sign = rng.integers(0, 2, size=(3, 4000), dtype=np.uint16) << 15
    a, b, c = ((bits | sign).view(np.float16))
    a[:5], b[:5], c[:5] = 1 + 2 ** -10, 1 + 2 ** -10, -(1 + 2 ** -9)  # ab + c = 2^-20; ab rounded first: 0
    got = nc._hfma(a, b, c)
    for i in range(a.size):
        exact = fractions.Fraction(float(a[i])) * fractions.Fraction(float(b[i])) + fractions.Fraction(float(c[i]))
        want = _round_half_exact(exact)
        assert got[i] == want, (a[i], b[i], c[i], got[i], want)
    twice = (a[:1].astype(np.float32) * b[:1]).astype(np.float16).astype(np.float32) + c[:1]
    assert float(got[0]) == 2 ** -20 and float(twice[0]) == 0.0


def test_gate_up_reference_is_silu_gate_times_up() -> None:
    g, u = _lin(2048, 1024, seed=11), _lin(2048, 1024, seed=12)
    x = _x(1024, seed=2)
    y = nc.reference_gate_up(nk.lane_order(x), g, u).float()
    gf, uf = g.lin.exact(x).cpu(), u.lin.exact(x).cpu()
    want = torch.nn.functional.silu(gf) * uf
    assert float((y - want).abs().max()) <= 0.02 * float(want.abs().max())
    lane = nc.reference_gate_up(nk.lane_order(x), g, u, lane_out=True)
    assert torch.equal(lane, nk.lane_order(y.to(torch.bfloat16)))
    assert lane.device.type == "cpu"


def test_supports_names_what_it_does_not_cover() -> None:
    assert nc.supports(5120, 5) == "" and nc.supports(32768, 8) == ""
    assert "1024" in nc.supports(5120, 2) and "1024" in nc.supports(192, 1)
    w = _lin(8, 1024, seed=1)
    with pytest.raises(ValueError, match="1024"):
        nc.reference_gemv(nk.lane_order(_x(1024, seed=0)), [w], split=2)


def test_load_says_why_without_a_gpu() -> None:
    kernels, why = nc.load(torch.device("cpu"))
    assert kernels is None and "CUDA device" in why


# --------------------------------------------------------------------------------------------------------------
# the kernel source, compiled on this machine by NVRTC (no GPU needed)
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cubin() -> bytes:
    return nc.compile_cubin(90)


def _sass_loops(cubin: bytes, function: str) -> dict:
    spec = importlib.util.spec_from_file_location("bench_nf4_sass", REPO_ROOT / "bench" / "nf4_sass.py")
    sass = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sass)
    return sass.cubin_loops(cubin, function)


@pytest.mark.parametrize("name,rows", [(f"nf4_gemv_r{r}", r) for r in nc.GEMV_ROWS] +
                         [(f"nf4_gate_up_r{r}", 2 * r) for r in nc.GATE_UP_ROWS])
def test_kernel_compiles_and_decodes_two_weights_per_table_load(cubin: bytes, name: str, rows: int) -> None:
    """The machine code of the K loop: one shared-memory load and one HFMA2 per two weights, every row's bytes
    loaded as 16-byte words, and no register spilled to local memory anywhere in the kernel."""
    stats = _sass_loops(cubin, name)
    loops = [ops for ops in stats["loops"] if ops.get("LDS")]  # the K loop, and the row loop around it
    assert loops, stats
    ops, weights = min(loops, key=lambda o: sum(o.values())), rows * 32
    assert ops["LDS"] == weights // 2 and ops["HFMA2"] == weights // 2 and ops["PRMT"] == weights // 2, ops
    assert ops["LDG"] >= rows, ops
    assert stats["registers"] <= 255 and not any(o in loop for loop in stats["loops"] for o in ("LDL", "STL"))


def test_args_struct_matches_the_source() -> None:
    """The ctypes mirror of ``struct Args``: same fields, same order, same kinds (a mismatch would launch the
    kernel on wrong pointers)."""
    body = re.search(r"struct Args \{(.*?)\n\};", nc.SOURCE.read_text(), re.S).group(1)
    fields = []
    for line in body.splitlines():
        decl = line.split("//")[0].strip().rstrip(";")
        if decl:
            head, *rest = decl.split(",")
            for part in [head.replace("*", " ").split()[-1]] + rest:
                m = re.match(r"\s*(\w+)(?:\[(\d+)\])?", part)
                fields.append((m.group(1), "ptr" if "*" in decl else "int", int(m.group(2) or 1)))
    mirror = []
    for name, kind in nc._Args._fields_:
        base = kind._type_ if hasattr(kind, "_length_") else kind
        mirror.append((name, "ptr" if base is ctypes.c_void_p else "int", getattr(kind, "_length_", 1)))
    assert len(fields) == 12 and fields == mirror


def test_constants_match_the_source() -> None:
    src = nc.SOURCE.read_text()
    assert f"#define XMAX_EXP {nc.XMAX_EXP}" in src and f"#define WARPS {nc.WARPS}" in src
    assert set(re.findall(r"^GEMV\((\d)\)", src, re.M)) == {str(r) for r in nc.GEMV_ROWS}
    assert set(re.findall(r"^GATE_UP\((\d)\)", src, re.M)) == {str(r) for r in nc.GATE_UP_ROWS}
    assert "asm" not in re.sub(r"//.*", "", src)  # no inline assembly


# --------------------------------------------------------------------------------------------------------------
# the whole decode step with the kernel's arithmetic
# --------------------------------------------------------------------------------------------------------------
def test_decode_step_with_the_cuda_gemv_matches_the_model_forward() -> None:
    """A Magistral-like layer (every K whole 1024-element steps) decoded through the fused step with the CUDA
    GEMV's arithmetic (on the CPU: its reference; on a GPU: the kernel), against one eager forward."""
    from test_nf4_kernel import _nf4_mistral
    from transformers import StaticCache

    from magistral_kit.model import fast_decode as fd

    model = _nf4_mistral(hidden_size=1024, intermediate_size=2048, num_hidden_layers=2, num_attention_heads=8,
                         num_key_value_heads=2, head_dim=128)
    dec, why = model._kit_test_decoder
    assert dec is not None, why
    if DEVICE == "cpu":
        assert dec.pair is None and "CUDA" in dec.gemv_note  # the CPU has no CUDA GEMV: the note says why
        dec.pair = nc.reference_kernels()
    else:
        assert dec.pair is not None, dec.gemv_note
    # every linear on the CUDA GEMV (the recorded defaults may keep some on Triton), K splits that are whole steps
    dec.pair_launch = nc.PairLaunch(qkv=(4, 1, 2), o=(2, 1, 2), gate_up=(2, 2), down=(4, 2, 2))
    assert all(dec.on_cuda_gemv(name) for name in ("qkv", "o", "gate_up", "down")) and all(dec.lanes().values())
    ids = torch.randint(3, 512, (1, 24), generator=torch.Generator().manual_seed(9)).to(DEVICE)
    n = 20
    with torch.inference_mode(), fd._KitAttention(model):
        full = model(input_ids=ids, logits_to_keep=0).logits[0].float()
        cache = StaticCache(config=model.config, max_cache_len=32)
        pos = torch.arange(n, device=DEVICE)
        model(input_ids=ids[:, :n], position_ids=pos.view(1, -1), cache_position=pos, past_key_values=cache,
              use_cache=True)
        for s in (n, n + 1):
            got = dec.step(ids[:, s:s + 1], torch.tensor([s], device=DEVICE), cache)[0]
            ref = full[s]
            assert float((got - ref).abs().max()) <= 0.05 * float(ref.abs().max()), s
            assert int(got.argmax()) == int(ref.argmax()) or float(ref.topk(2).values.diff().abs()) < 0.25


def test_triton_gemv_can_be_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    from test_nf4_kernel import _nf4_mistral

    monkeypatch.setenv(nk.ENV_DISABLE, "triton")
    model = _nf4_mistral(hidden_size=1024, intermediate_size=2048, num_hidden_layers=1, num_attention_heads=8,
                         num_key_value_heads=2, head_dim=128)
    dec, why = model._kit_test_decoder
    assert dec is not None and dec.pair is None and "triton" in dec.gemv_note, (why, dec and dec.gemv_note)


def test_a_model_the_cuda_gemv_does_not_cover_says_why(tiny_nf4_128: torch.nn.Module) -> None:
    """K of 128 is not whole 1024-element steps: every linear stays on the Triton GEMV, and the note names why."""
    dec, why = tiny_nf4_128._kit_test_decoder
    assert dec is not None and dec.pair is None, why
    assert "does not cover" in dec.gemv_note and "1024" in dec.gemv_note, dec.gemv_note


@pytest.fixture(scope="module")
def tiny_nf4_128() -> torch.nn.Module:
    from test_nf4_kernel import _nf4_mistral

    return _nf4_mistral(hidden_size=128, intermediate_size=256, num_hidden_layers=1, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=16)


# --------------------------------------------------------------------------------------------------------------
# the kernel on the GPU (KIT_TEST_DEVICE=cuda)
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kernels() -> nc.PairKernels:
    k, why = nc.load(torch.device("cuda"))
    assert k is not None, why
    return k


@gpu
@pytest.mark.parametrize("rows,k,split,rpw,bps,scale", [
    ((37,), 2048, 1, 2, 1, 1.0),
    ((37,), 2048, 2, 4, 3, 1.0),
    ((512, 128, 128), 1024, 1, 4, 2, 1.0),
    ((5,), 4096, 4, 4, 1, 1.0),
    ((64,), 3072, 3, 2, 2, 3e4),  # x scaled into half range
])
def test_kernel_equals_the_reference_bit_for_bit(kernels: nc.PairKernels, rows: tuple[int, ...], k: int,
                                                 split: int, rpw: int, bps: int, scale: float) -> None:
    ws = [_lin(n, k, seed=n + i) for i, n in enumerate(rows)]
    x = nk.lane_order(_x(k, seed=3, scale=scale))
    got = kernels.gemv(x, ws, split, rpw, bps)
    torch.cuda.synchronize()
    want = nc.reference_gemv(x, ws, split)
    assert np.array_equal(got.cpu().numpy(), want), float(np.abs(got.cpu().numpy() - want).max())


@gpu
@pytest.mark.parametrize("n,rpw,lane_out", [(40, 2, False), (2048, 4, True)])
def test_gate_up_kernel_equals_the_reference(kernels: nc.PairKernels, n: int, rpw: int, lane_out: bool) -> None:
    g, u = _lin(n, 2048, seed=1), _lin(n, 2048, seed=2)
    x = nk.lane_order(_x(2048, seed=4))
    got = kernels.gate_up(x, g, u, rpw, 2, lane_out).float().cpu()
    want = nc.reference_gate_up(x, g, u, lane_out).float()
    step = want.abs() * 2.0 ** -7 + 1e-30  # expf vs numpy's exp: at most one bf16 step apart
    assert bool(((got - want).abs() <= step).all())
    assert float((got == want).float().mean()) >= 0.99


@gpu
def test_kernel_runs_inside_a_cuda_graph(kernels: nc.PairKernels) -> None:
    w = _lin(256, 2048, seed=5)
    x = nk.lane_order(_x(2048, seed=6))
    eager = kernels.gemv(x, [w], 2, 4, 2)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = kernels.gemv(x, [w], 2, 4, 2)
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager)
