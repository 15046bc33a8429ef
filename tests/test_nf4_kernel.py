"""The NF4 decode kernels (magistral_kit/model/nf4_kernel.py) on the CPU, through Triton's interpreter.

The same Triton code runs on the GPU; here ``TRITON_INTERPRET=1`` executes it with numpy. Inputs are quantized by
bitsandbytes itself (``quantize_4bit``, NF4, double quant, blocksize 64), and the reference is
``dequantize_4bit(q).float() @ x.float()``. Triton is a pinned dependency: a missing triton fails this file.
"""
from __future__ import annotations

import os

# CI: the CPU, through Triton's interpreter. On a GPU machine, KIT_TEST_DEVICE=cuda runs the same checks compiled.
DEVICE = os.environ.get("KIT_TEST_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (it reads the variable at @jit time)

import tempfile  # noqa: E402

import bitsandbytes.functional as bnbf  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import triton  # noqa: E402,F401  (fails, never skips, when triton is missing)

from magistral_kit.model import nf4_kernel as nk  # noqa: E402

OUT_ULP = 2.0 ** -8  # bf16 output: one rounding of |y| costs at most 2^-9 |y|; allow two


class _Lin(torch.nn.Module):
    """What bitsandbytes' Linear4bit exposes to the kernel: a packed weight carrying its quant_state."""

    def __init__(self, n: int, k: int, seed: int, scale: float = 1.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.dense = (torch.randn(n, k, generator=g) * scale).to(torch.bfloat16).to(DEVICE)
        q, state = bnbf.quantize_4bit(self.dense, quant_type="nf4", compress_statistics=True, blocksize=64)
        q.quant_state = state
        self.weight = q
        self.bias = None
        self.state = state

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """fp32 product with bitsandbytes' own dequantized weight."""
        return bnbf.dequantize_4bit(self.weight, self.state).float() @ x.float()

    def exact(self, x: torch.Tensor) -> torch.Tensor:
        """fp32 product with the weight decoded in fp32 (NF4 code x double-quantized absmax), no bf16 rounding."""
        qs = self.state
        b = self.weight.reshape(-1).long()
        codes = torch.stack([b >> 4, b & 15], 1).reshape(-1)
        s2 = qs.state2.absmax.repeat_interleave(256)[:qs.absmax.numel()]
        absmax = qs.state2.code[qs.absmax.long()] * s2 + qs.offset
        w = (torch.tensor(nk.NF4_CODE, device=b.device)[codes].reshape(-1, 64) * absmax[:, None]).reshape(qs.shape)
        return w @ x.float()


def test_bitsandbytes_quantizes_on_the_cpu() -> None:
    lin = _Lin(8, 128, seed=0)
    qs = lin.state
    assert lin.weight.dtype == torch.uint8 and lin.weight.numel() == 8 * 128 // 2
    assert qs.quant_type == "nf4" and qs.blocksize == 64 and qs.nested and qs.state2.blocksize == 256
    assert qs.absmax.dtype == torch.uint8 and qs.state2.absmax.dtype == torch.float32
    assert torch.allclose(qs.code.float().cpu(), torch.tensor(nk.NF4_CODE), atol=1e-6)


@pytest.mark.parametrize("n,k,split,block_rows,warps", [
    (8, 64, 1, 8, 1),  # one block per row
    (7, 192, 1, 4, 1),  # odd rows, K not a multiple of the 1024-element step
    (33, 320, 2, 8, 2),  # rows past a program's tile, split K, two warps per program
    (16, 1088, 3, 8, 4),  # K > one step, uneven split
    (5, 2048, 4, 2, 1),  # several steps per split
    (8, 2048, 2, 4, 1),  # whole steps and whole tiles: the unmasked (EVEN) path
    (16, 1024, 1, 8, 2),  # the unmasked path with two warps per program
])
def test_gemv_matches_bitsandbytes_dequantize(n: int, k: int, split: int, block_rows: int, warps: int) -> None:
    lin = _Lin(n, k, seed=n * 1000 + k)
    w, why = nk.nf4_weight(lin)
    assert w is not None, why
    x = torch.randn(k, generator=torch.Generator().manual_seed(k)).to(torch.bfloat16).to(DEVICE)
    y = nk.nf4_linear(x, [w], nk._code_table(x.device), split=split, block_rows=block_rows, warps=warps)
    assert y.dtype == torch.bfloat16 and y.shape == (n,)
    ref, exact = lin.reference(x), lin.exact(x)
    # the kernel decodes in fp32: it equals the fp32-decoded product up to the bf16 output rounding
    assert torch.all((y.float() - exact).abs() <= OUT_ULP * exact.abs() + 1e-5 * exact.abs().max())
    # ... and stays within bitsandbytes' own error of its dequantized product (bnb rounds weights to bf16)
    err = float((y.float() - ref).abs().max() / ref.abs().max())
    assert err < 5e-3, err


def test_x_in_lane_order_gives_the_same_sums() -> None:
    """The decode step's producers store x in lane order so the GEMV reads it in whole-warp runs: the same
    products in the same order, so the sums are bit-identical to the natural-order launch."""
    k = 3072
    lin = _Lin(20, k, seed=7)  # 20 rows: the last program of 8 rows is partly masked
    w, why = nk.nf4_weight(lin)
    assert w is not None, why
    x = torch.randn(k, generator=torch.Generator().manual_seed(7)).to(torch.bfloat16).to(DEVICE)
    xl = nk.lane_order(x)
    assert not torch.equal(xl, x) and torch.equal(xl.sort().values, x.sort().values)  # a true permutation
    code = nk._code_table(x.device)
    args = [w.words], [w.absmax], [w.absmax2], [w.offset], code, w.code2, [20], k
    for split in (1, 3):
        natural = nk.nf4_gemv_launch(x, *args, split, 8, 1)
        assert torch.equal(nk.nf4_gemv_launch(xl, *args, split, 8, 1, lane_x=True), natural)
    with pytest.raises(ValueError, match="whole 1024"):
        nk.nf4_gemv_launch(xl, *args, 4, 8, 1, lane_x=True)  # 4 splits of 3072: 768 elements, not whole steps
    # gate|up with 1024 outputs, so its output can be stored in lane order too
    wn = nk.nf4_weight(_Lin(1024, 1024, seed=8, scale=0.05))[0]
    two = (*nk._flat([wn, wn]), code, wn.code2, 1024, 1024, 8, 1)
    x, xl = x[:1024], nk.lane_order(x[:1024])
    natural = nk.nf4_gate_up_launch(x, *two)
    assert torch.equal(nk.nf4_gate_up_launch(xl, *two, lane_x=True), natural)
    assert torch.equal(nk.nf4_gate_up_launch(x, *two, lane_out=True), nk.lane_order(natural))


def test_producers_store_lane_order() -> None:
    """add + RMSNorm and attention write the same values, permuted into lane order, when asked."""
    g = torch.Generator().manual_seed(4)
    h = 2048
    res = torch.randn(h, generator=g).to(torch.bfloat16).to(DEVICE)
    parts = torch.randn(2, h, generator=g).to(DEVICE)
    ln = torch.rand(h, generator=g).to(torch.bfloat16).to(DEVICE)
    x, r = nk.add_rmsnorm_launch(res, parts, ln, 1e-5)
    xl, rl = nk.add_rmsnorm_launch(res, parts, ln, 1e-5, lane_out=True)
    assert torch.equal(xl, nk.lane_order(x)) and torch.equal(rl, r)  # the residual stays in natural order
    n_heads, n_kv, d, length = 8, 2, 128, 128
    kc = torch.randn(1, n_kv, length, d, generator=g).to(torch.bfloat16).to(DEVICE)
    vc = torch.randn(1, n_kv, length, d, generator=g).to(torch.bfloat16).to(DEVICE)
    q = torch.randn(n_heads * d, generator=g).to(torch.bfloat16).to(DEVICE)
    p = torch.tensor([70], device=DEVICE)
    att = nk.attn_decode_launch(q, kc, vc, p, n_heads, d ** -0.5)
    assert torch.equal(nk.attn_decode_launch(q, kc, vc, p, n_heads, d ** -0.5, lane_out=True), nk.lane_order(att))
    with pytest.raises(ValueError, match="multiple of 1024"):
        nk.add_rmsnorm_launch(res[:1000], None, ln[:1000], 1e-5, lane_out=True)


def test_gemv_three_weights_in_one_launch() -> None:
    k = 256
    lins = [_Lin(n, k, seed=i) for i, n in enumerate((24, 8, 8))]
    ws = [nk.nf4_weight(m)[0] for m in lins]
    x = torch.randn(k, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16).to(DEVICE)
    parts = nk.nf4_gemv_launch(x, [w.words for w in ws], [w.absmax for w in ws], [w.absmax2 for w in ws],
                               [w.offset for w in ws], nk._code_table(x.device), ws[0].code2,
                               [w.n for w in ws], k, split=2, block_rows=8)
    assert parts.shape == (2, 40)  # K split in two halves of 128 elements
    y = parts.sum(0)
    exact = torch.cat([m.exact(x) for m in lins])
    assert torch.allclose(y, exact, rtol=1e-4, atol=1e-4 * float(exact.abs().max()))


def test_gemv_poisoned_output_is_fully_written() -> None:
    lin = _Lin(12, 128, seed=5)
    w = nk.nf4_weight(lin)[0]
    x = torch.randn(128).to(torch.bfloat16).to(DEVICE)
    parts = nk.nf4_gemv_launch(x, [w.words], [w.absmax], [w.absmax2], [w.offset], nk._code_table(x.device), w.code2,
                               [12], 128, split=2, block_rows=8)
    assert torch.isfinite(parts).all()  # torch.empty output: any unwritten row would show garbage or NaN
    assert torch.allclose(parts.sum(0), lin.exact(x), rtol=1e-3, atol=1e-3)


def test_gate_up_is_silu_gate_times_up() -> None:
    k, n = 128, 24
    gate, up = _Lin(n, k, seed=11), _Lin(n, k, seed=12)
    wg, wu = nk.nf4_weight(gate)[0], nk.nf4_weight(up)[0]
    x = torch.randn(k, generator=torch.Generator().manual_seed(13)).to(torch.bfloat16).to(DEVICE)
    out = nk.nf4_gate_up_launch(x, [wg.words, wu.words], [wg.absmax, wu.absmax], [wg.absmax2, wu.absmax2],
                                [wg.offset, wu.offset], nk._code_table(x.device), wg.code2, n, k, block_rows=8)
    g, u = gate.exact(x).to(torch.bfloat16), up.exact(x).to(torch.bfloat16)
    ref = torch.nn.functional.silu(g) * u  # the bf16 module path
    assert torch.allclose(out.float(), ref.float(), rtol=2 ** -6, atol=1e-2)


def test_nf4_weight_declines_what_it_cannot_read() -> None:
    lin = torch.nn.Linear(64, 8, bias=False)
    w, why = nk.nf4_weight(lin)
    assert w is None and "quant_state" in why
    q, state = bnbf.quantize_4bit(torch.randn(8, 128).to(torch.bfloat16), quant_type="fp4",
                                  compress_statistics=True, blocksize=64)
    q.quant_state = state
    m = torch.nn.Module()
    m.weight, m.bias = q, None
    w, why = nk.nf4_weight(m)
    assert w is None and "fp4" in why


# --------------------------------------------------------------------------------------------------------------
# the whole fused decode step on a tiny NF4 Mistral, against the model's own forward
# --------------------------------------------------------------------------------------------------------------
def _nf4_mistral(**shape: int) -> torch.nn.Module:
    """A random-weight Mistral of the given shape, saved and reloaded in NF4 (double quant) by transformers."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, MistralConfig, MistralForCausalLM

    cfg = MistralConfig(**shape, vocab_size=512, max_position_embeddings=4096, sliding_window=None,
                        bos_token_id=1, eos_token_id=2, rms_norm_eps=1e-5)
    torch.manual_seed(1)
    model = MistralForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
    model = model.to(torch.bfloat16)
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=torch.bfloat16)
        q = AutoModelForCausalLM.from_pretrained(d, quantization_config=bnb, device_map={"": DEVICE},
                                                 dtype=torch.bfloat16)
    # the kit's views of the NF4 tensors are taken before any forward: on the CPU, bitsandbytes repacks a weight
    # for its own CPU kernel at the first forward (the kit then keeps the original tensors alive)
    q._kit_test_decoder = nk.prepare_decode(q, allow_cpu=True)
    return q.eval()


@pytest.fixture(scope="module")
def tiny_nf4() -> torch.nn.Module:
    # heads x head_dim (64) != hidden (128), as in Magistral (4096 vs 5120): a K mixed up between q|k|v and o fails
    return _nf4_mistral(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=16)


def test_decode_step_in_lane_order_matches_natural_order() -> None:
    """Every K of this model is a multiple of 1024 (as in Magistral): the fused step hands each GEMV its input in
    lane order, and the logits are bit-identical to the same step with natural order everywhere."""
    from transformers import StaticCache

    from magistral_kit.model import fast_decode as fd

    model = _nf4_mistral(hidden_size=1024, intermediate_size=2048, num_hidden_layers=1, num_attention_heads=8,
                         num_key_value_heads=2, head_dim=128)
    dec, why = model._kit_test_decoder
    assert dec is not None, why
    dec.pair = None  # the Triton GEMVs' lane order is under test (on a GPU the CUDA GEMV reads lane order only)
    # one split everywhere but down (2 x 1024): the interpreter pays per program
    dec.splits = nk.DecodeSplits(qkv=(16, 1, 1), o=(16, 1, 1), gate_up=(16, 1), down=(16, 2, 1))
    assert all(dec.lanes().values()), dec.lanes()
    ids = torch.randint(3, 512, (1, 12), generator=torch.Generator().manual_seed(5)).to(DEVICE)
    n = 10
    logits = {}
    with torch.inference_mode(), fd._KitAttention(model):
        for lane in (True, False):
            dec.lane_order = lane
            cache = StaticCache(config=model.config, max_cache_len=32)
            pos = torch.arange(n, device=DEVICE)
            model(input_ids=ids[:, :n], position_ids=pos.view(1, -1), cache_position=pos, past_key_values=cache,
                  use_cache=True)
            logits[lane] = dec.step(ids[:, n:n + 1], torch.tensor([n], device=DEVICE), cache)
        ref = model(input_ids=ids[:, :n + 1], logits_to_keep=1).logits[0, -1].float()
    assert not any(dec.lanes().values())  # lane_order=False really took the natural path
    assert torch.equal(logits[True], logits[False])
    assert float((logits[True][0] - ref).abs().max()) <= 0.05 * float(ref.abs().max())


def test_prepare_decode_is_cuda_only_unless_asked(tiny_nf4: torch.nn.Module) -> None:
    dec, why = nk.prepare_decode(tiny_nf4)
    if DEVICE == "cpu":
        assert dec is None and "CUDA" in why
    else:
        assert dec is not None and why == ""
    dec, why = tiny_nf4._kit_test_decoder  # taken with allow_cpu=True before any forward
    assert dec is not None and why == ""


def test_prepare_decode_can_be_switched_off(tiny_nf4: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(nk.ENV_DISABLE, "0")
    dec, why = nk.prepare_decode(tiny_nf4, allow_cpu=True)
    assert dec is None and nk.ENV_DISABLE in why


def test_decode_step_matches_the_model_forward(tiny_nf4: torch.nn.Module) -> None:
    """Prefill through transformers + bitsandbytes, then two decode steps through the kit kernels; the logits
    must match one full eager forward as closely as bitsandbytes' own decode step does."""
    from transformers import StaticCache

    from magistral_kit.model import fast_decode as fd

    model = tiny_nf4
    dec, why = model._kit_test_decoder
    assert dec is not None, why
    # fewer, larger programs than the GPU's tuned launch shapes: the interpreter pays per program (splits kept)
    dec.splits = nk.DecodeSplits(qkv=(16, 2, 1), o=(16, 2, 1), gate_up=(16, 1), down=(16, 2, 1))
    ids = torch.randint(3, 512, (1, 40), generator=torch.Generator().manual_seed(7)).to(DEVICE)
    n = 37
    with torch.inference_mode(), fd._KitAttention(model):
        full = model(input_ids=ids, logits_to_keep=0).logits[0].float()
        caches = []
        for _ in range(2):
            cache = StaticCache(config=model.config, max_cache_len=96)
            pos = torch.arange(n, device=DEVICE)
            model(input_ids=ids[:, :n], position_ids=pos.view(1, -1), cache_position=pos, past_key_values=cache,
                  use_cache=True)
            caches.append(cache)
        kit_cache, bnb_cache = caches
        for s in (n, n + 1):
            p = torch.tensor([s], device=DEVICE)
            kit = dec.step(ids[:, s:s + 1], p, kit_cache)[0]
            bnb = model(input_ids=ids[:, s:s + 1], position_ids=p.view(1, 1), cache_position=p,
                        past_key_values=bnb_cache, use_cache=True, logits_to_keep=1).logits[0, -1].float()
            ref = full[s]
            kit_err = float((kit - ref).abs().max())
            bnb_err = float((bnb - ref).abs().max())
            assert kit_err <= max(2.0 * bnb_err, 0.05 * float(ref.abs().max())), (s, kit_err, bnb_err)
            assert int(kit.argmax()) == int(ref.argmax()) or float(ref.topk(2).values.diff().abs()) < 0.25
        # the kernels wrote k/v at exactly the decoded positions, as bitsandbytes' step did
        k_kit, k_bnb = kit_cache.layers[0].keys, bnb_cache.layers[0].keys
        assert torch.equal(k_kit[:, :, :n], k_bnb[:, :, :n])
        assert float((k_kit[:, :, n:n + 2].float() - k_bnb[:, :, n:n + 2].float()).abs().max()) < 0.1
        assert not k_kit[:, :, n + 2:].any()


@pytest.mark.parametrize("pos,length", [(0, 320), (130, 320), (300, 320), (2500, 2560)])
def test_attention_reads_only_the_filled_cache(pos: int, length: int) -> None:
    """Stale values past the position (an earlier, longer conversation) must not change the result; positions
    over several splits are merged (the last case: every program of a head takes several chunks)."""
    g = torch.Generator().manual_seed(pos)
    n_heads, n_kv, d = 4, 2, 32
    kc = torch.randn(1, n_kv, length, d, generator=g).to(torch.bfloat16).to(DEVICE)
    vc = torch.randn(1, n_kv, length, d, generator=g).to(torch.bfloat16).to(DEVICE)
    q = torch.randn(n_heads * d, generator=g).to(torch.bfloat16).to(DEVICE)
    p = torch.tensor([pos], device=DEVICE)
    out = nk.attn_decode_launch(q, kc, vc, p, n_heads, d ** -0.5)
    kc2, vc2 = kc.clone(), vc.clone()
    kc2[:, :, pos + 1:] = 1e4  # garbage past the position
    vc2[:, :, pos + 1:] = 3e4
    out2 = nk.attn_decode_launch(q, kc2, vc2, p, n_heads, d ** -0.5)
    assert torch.equal(out, out2)
    qh = q.view(n_heads, d).float()
    k = kc[0, :, :pos + 1].float().repeat_interleave(n_heads // n_kv, 0)
    v = vc[0, :, :pos + 1].float().repeat_interleave(n_heads // n_kv, 0)
    ref = torch.softmax((qh[:, None] @ k.transpose(1, 2))[:, 0] * d ** -0.5, -1)[:, None] @ v
    assert torch.allclose(out.float(), ref.reshape(-1), atol=2e-2, rtol=2e-2)


def test_decode_stages_match_the_modules(tiny_nf4: torch.nn.Module) -> None:
    """Layer 0 of the tiny model, stage by stage: each fused kernel against the module path it replaces."""
    from transformers import StaticCache
    from transformers.models.mistral.modeling_mistral import apply_rotary_pos_emb

    from magistral_kit.model import fast_decode as fd

    model = tiny_nf4
    dec, why = model._kit_test_decoder
    assert dec is not None, why
    ops, lay, mod = nk._ops(), dec.layers[0], model.model.layers[0]
    ids = torch.randint(3, 512, (1, 24), generator=torch.Generator().manual_seed(3)).to(DEVICE)
    n = 23

    def close(name: str, got: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
        err = float((got.float().reshape(-1) - ref.float().reshape(-1)).abs().max())
        assert err <= tol * max(1.0, float(ref.float().abs().max())), (name, err, float(ref.float().abs().max()))

    with torch.inference_mode(), fd._KitAttention(model):
        cache = StaticCache(config=model.config, max_cache_len=64)
        pos = torch.arange(n, device=DEVICE)
        model(input_ids=ids[:, :n], position_ids=pos.view(1, -1), cache_position=pos, past_key_values=cache,
              use_cache=True)
        p = torch.tensor([n], device=DEVICE)
        emb = model.model.embed_tokens(ids[:, n:n + 1])
        x_ref = mod.input_layernorm(emb)
        x, res = ops.add_rmsnorm(emb.reshape(-1), None, lay.ln1, dec.eps)
        close("input norm", x, x_ref, 2 ** -7)
        at = mod.self_attn
        q_ref, k_ref, v_ref = at.q_proj(x_ref), at.k_proj(x_ref), at.v_proj(x_ref)
        for split, br, warps in ((1, 8, 1), (3, 4, 1), (2, 8, 2)):
            parts = ops.gemv(x_ref.reshape(-1), *nk._flat(lay.qkv), dec.code, lay.qkv[0].code2,
                             [w.n for w in lay.qkv], lay.qkv[0].k, split, br, warps)
            close(f"qkv split {split} br {br}", parts.sum(0), torch.cat([q_ref, k_ref, v_ref], -1), 2 ** -6)
        cos, sin = model.model.rotary_emb(emb, p.view(1, 1))
        qh = q_ref.view(1, 1, dec.n_heads, -1).transpose(1, 2)
        kh = k_ref.view(1, 1, dec.n_kv, -1).transpose(1, 2)
        qe, ke = apply_rotary_pos_emb(qh, kh, cos, sin)
        kc, vc = cache.layers[0].keys.clone(), cache.layers[0].values.clone()
        exact = torch.cat([q_ref, k_ref, v_ref], -1).float().reshape(1, -1)
        q = ops.rope_cache(exact, cos.reshape(-1), sin.reshape(-1), p, kc, vc, dec.n_heads, dec.n_kv,
                           dec.head_dim)
        close("rotary q", q, qe, 2 ** -7)
        close("cache k", kc[0, :, n], ke[0, :, 0], 2 ** -7)
        close("cache v", vc[0, :, n], v_ref.view(dec.n_kv, -1), 2 ** -7)
        assert torch.equal(kc[:, :, :n], cache.layers[0].keys[:, :, :n])
        att_ref, _ = fd.gqa_attention(at, qe, kc, vc, None, scaling=dec.head_dim ** -0.5, position_ids=p.view(1, 1))
        att = ops.attn_decode(qe.reshape(-1).contiguous(), kc, vc, p, dec.n_heads, dec.head_dim ** -0.5)
        close("attention", att, att_ref, 2 ** -6)
        o_ref = at.o_proj(att_ref.reshape(1, 1, -1))
        o_parts = ops.gemv(att_ref.reshape(-1).contiguous(), *nk._flat([lay.o]), dec.code, lay.o.code2,
                           [lay.o.n], lay.o.k, 2, 8, 1)
        close("o_proj", o_parts.sum(0), o_ref, 2 ** -6)
        h_ref = emb + o_ref
        x2_ref = mod.post_attention_layernorm(h_ref)
        x2, h = ops.add_rmsnorm(emb.reshape(-1), o_ref.float().reshape(1, -1), lay.ln2, dec.eps)
        close("residual", h, h_ref, 2 ** -7)
        close("post norm", x2, x2_ref, 2 ** -7)
        mlp = mod.mlp
        act_ref = mlp.act_fn(mlp.gate_proj(x2_ref)) * mlp.up_proj(x2_ref)
        for br, warps in ((4, 1), (8, 2)):
            act = ops.gate_up(x2_ref.reshape(-1).contiguous(), *nk._flat([lay.gate, lay.up]), dec.code,
                              lay.gate.code2, lay.gate.n, lay.gate.k, br, warps)
            close(f"gate_up br {br}", act, act_ref, 2 ** -5)
        down_ref = mlp.down_proj(act_ref)
        d_parts = ops.gemv(act_ref.reshape(-1).contiguous(), *nk._flat([lay.down]), dec.code, lay.down.code2,
                           [lay.down.n], lay.down.k, 4, 8, 1)
        close("down_proj", d_parts.sum(0), down_ref, 2 ** -6)


def test_per_linear_mode_matches_the_model_step(tiny_nf4: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    """MAGISTRAL_KIT_NF4_KERNEL=linears: transformers' own step with only the NF4 linears swapped for the kernel."""
    from transformers import StaticCache

    from magistral_kit.model import fast_decode as fd

    fused, _ = tiny_nf4._kit_test_decoder
    monkeypatch.setenv(nk.ENV_DISABLE, "linears")
    model = tiny_nf4
    lins = []  # the fixture's views, taken before bitsandbytes repacked the CPU weights
    for lay, layer in zip(fused.layers, model.model.layers):
        a, m = layer.self_attn, layer.mlp
        lins += [(a.q_proj, lay.qkv[0]), (a.k_proj, lay.qkv[1]), (a.v_proj, lay.qkv[2]), (a.o_proj, lay.o),
                 (m.gate_proj, lay.gate), (m.up_proj, lay.up), (m.down_proj, lay.down)]
    dec = nk.LinearsDecoder(model, lins, fused.code, nk.DecodeSplits(other=(16, 2, 1)))
    ids = torch.randint(3, 512, (1, 30), generator=torch.Generator().manual_seed(11)).to(DEVICE)
    n = 29
    with torch.inference_mode(), fd._KitAttention(model):
        full = model(input_ids=ids, logits_to_keep=1).logits[0, -1].float()
        cache = StaticCache(config=model.config, max_cache_len=64)
        pos = torch.arange(n, device=DEVICE)
        model(input_ids=ids[:, :n], position_ids=pos.view(1, -1), cache_position=pos, past_key_values=cache,
              use_cache=True)
        kit = dec.step(ids[:, n:n + 1], torch.tensor([n], device=DEVICE), cache)[0]
    assert float((kit - full).abs().max()) <= 0.05 * float(full.abs().max())
    assert all("forward" not in mod.__dict__ for mod, _ in lins)  # the swap is undone after the step
