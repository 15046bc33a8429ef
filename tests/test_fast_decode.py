"""The fast decode loop, run eagerly on the CPU, against plain ``model.generate`` on tiny random Mistrals.

Random weights give near-tied logits, so greedy tokens are compared only where the top-2 logits are clearly
apart; logits themselves are compared step by step (teacher-forced against one full forward pass).
"""
from __future__ import annotations

import tempfile

import pytest
import torch
from transformers import MistralConfig, MistralForCausalLM

from magistral_kit.model import fast_decode as fd
from magistral_kit.model.fast_decode import IncrementalText, cache_steps_for, fast_generate

GAP = 0.25  # top-2 logit gap above which greedy tokens must agree
VOCAB = 512


def _tiny_config(**kw: object) -> MistralConfig:
    base = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=8,
                num_key_value_heads=2, head_dim=16, vocab_size=VOCAB, max_position_embeddings=4096,
                sliding_window=None, bos_token_id=1, eos_token_id=2)
    base.update(kw)
    return MistralConfig(**base)


def _spread(model: torch.nn.Module) -> torch.nn.Module:
    """A wider init keeps a 2-layer model's logits apart, so greedy comparisons mean something."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
    return model.eval()


@pytest.fixture(scope="module")
def tiny() -> MistralForCausalLM:
    torch.manual_seed(0)
    return _spread(MistralForCausalLM(_tiny_config()))


@pytest.fixture(scope="module")
def tiny_nf4() -> torch.nn.Module:
    """The same shape quantized to NF4 by bitsandbytes on the CPU (what the kit loads, minus CUDA)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    torch.manual_seed(1)
    model = _spread(MistralForCausalLM(_tiny_config(num_attention_heads=4, head_dim=32))).to(torch.bfloat16)
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=torch.bfloat16)
        q = AutoModelForCausalLM.from_pretrained(d, quantization_config=bnb, device_map={"": "cpu"},
                                                 dtype=torch.bfloat16)
    assert type(q.model.layers[0].mlp.up_proj).__name__ == "Linear4bit"
    return q.eval()


def _prompt(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (1, n), generator=g)


def _reference(model: torch.nn.Module, ids: torch.Tensor, n: int) -> tuple[list[int], list[torch.Tensor]]:
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                             do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0,
                             eos_token_id=None)
    return out.sequences[0, ids.shape[1]:].tolist(), [x[0].float() for x in out.logits]


def _check_against_generate(model: torch.nn.Module, ids: torch.Tensor, n: int, atol: float,
                            **kw: object) -> tuple[int, int]:
    """Eager loop vs generate and vs a full forward; returns (clear steps compared, clear steps agreeing)."""
    res = fast_generate(model, ids, max_new_tokens=n, mode="eager", return_logits=True, **kw)
    assert res.path == "eager" and res.reason == "" and res.stop_reason == "max_new_tokens"
    assert len(res.ids) == n == len(res.logits)
    # 1. teacher-forced: each step's logits equal one full forward over the loop's own sequence
    full = torch.cat([ids, torch.tensor([res.ids])], dim=1)
    with torch.inference_mode():
        ref = model(full).logits[0, ids.shape[1] - 1: ids.shape[1] - 1 + n].float()
    mine = torch.stack(res.logits)
    assert torch.allclose(mine, ref, atol=atol, rtol=0), (mine - ref).abs().max()
    clear = agree = 0
    for step in range(n):
        top2 = ref[step].topk(2).values
        if top2[0] - top2[1] > GAP:
            clear += 1
            agree += int(res.ids[step] == int(ref[step].argmax()))
    # 2. against plain generate: same tokens up to the first near tie, same logits while the prefixes agree
    gen_ids, gen_logits = _reference(model, ids, n)
    for step in range(n):
        assert torch.allclose(res.logits[step], gen_logits[step], atol=atol, rtol=0)
        top2 = gen_logits[step].topk(2).values
        if top2[0] - top2[1] <= GAP:
            break
        assert res.ids[step] == gen_ids[step], f"step {step}: clear gap but different token"
        if res.ids[step] != gen_ids[step]:
            break
    return clear, agree


def test_eager_loop_matches_generate_fp32(tiny: MistralForCausalLM) -> None:
    clear, agree = _check_against_generate(tiny, _prompt(37), 24, atol=1e-4, cache_steps=(128,))
    assert clear >= 10 and agree == clear


def test_chunked_prefill_matches(tiny: MistralForCausalLM) -> None:
    """Prefill in chunks of 16 (masked attention over earlier chunks) gives the same logits."""
    clear, agree = _check_against_generate(tiny, _prompt(50, seed=3), 8, atol=1e-4, cache_steps=(128,),
                                           prefill_chunk=16)
    assert clear >= 4 and agree == clear


def test_eager_loop_matches_generate_nf4(tiny_nf4: torch.nn.Module) -> None:
    clear, agree = _check_against_generate(tiny_nf4, _prompt(20, seed=5), 8, atol=0.05, cache_steps=(64,))
    assert clear >= 3 and agree == clear


def test_decode_attention_matches_reference() -> None:
    """The folded GQA decode attention equals repeat_kv + softmax attention over the filled slots only."""
    torch.manual_seed(4)
    b, h, kv, d, s, pos = 1, 8, 2, 16, 40, 23
    q, k, v = torch.randn(b, h, 1, d), torch.randn(b, kv, s, d), torch.randn(b, kv, s, d)
    k[:, :, pos + 1:] = 1e4  # garbage in future slots must not leak
    out, _ = fd.gqa_attention(torch.nn.Module(), q, k, v, None, scaling=d ** -0.5,
                              position_ids=torch.tensor([[pos]]))
    kr = k[:, :, :pos + 1].repeat_interleave(h // kv, dim=1)
    vr = v[:, :, :pos + 1].repeat_interleave(h // kv, dim=1)
    ref = torch.softmax(q @ kr.transpose(-1, -2) * d ** -0.5, dim=-1) @ vr
    assert out.shape == (b, 1, h, d)
    assert torch.allclose(out, ref.transpose(1, 2), atol=1e-5)


def test_eos_stops_and_is_kept(tiny: MistralForCausalLM) -> None:
    ids = _prompt(30, seed=7)
    first = fast_generate(tiny, ids, max_new_tokens=12, mode="eager", cache_steps=(128,))
    stop_at = next(i for i in range(2, 12) if first.ids[i] not in first.ids[:i])
    eos = first.ids[stop_at]
    res = fast_generate(tiny, ids, max_new_tokens=12, mode="eager", cache_steps=(128,), eos_token_ids=[999, eos])
    assert res.ids == first.ids[:stop_at + 1] and res.stop_reason == "eos"
    gen = fast_generate(tiny, ids, max_new_tokens=12, mode="auto", cache_steps=(128,), eos_token_ids=[eos])
    assert gen.path == "generate" and gen.ids == res.ids and gen.stop_reason == "eos"


def test_max_new_tokens_and_first_token_limits(tiny: MistralForCausalLM) -> None:
    ids = _prompt(12, seed=8)
    for n in (1, 2, 5):
        res = fast_generate(tiny, ids, max_new_tokens=n, mode="eager", cache_steps=(64,))
        assert len(res.ids) == n and res.stop_reason == "max_new_tokens"


def test_cache_full_stops_inside_the_largest_step(tiny: MistralForCausalLM) -> None:
    ids = _prompt(20, seed=9)
    res = fast_generate(tiny, ids, max_new_tokens=50, mode="eager", cache_steps=(32,))
    assert res.cache_len == 32 and res.stop_reason == "cache_full"
    assert len(res.ids) == 32 - 20 + 1  # the last token needs no cache slot of its own


def test_next_step_is_queued_before_a_token_is_read(tiny: MistralForCausalLM) -> None:
    """The loop keeps the device busy: step k+1 is already queued when token k reaches the host (streaming, EOS
    check), never more than QUEUE_DEPTH steps at once, and nothing past max_new_tokens is queued."""
    events: list[str] = []
    ids = _prompt(14, seed=21)
    fd.release_runner(tiny)
    fast_generate(tiny, ids, max_new_tokens=2, mode="eager", cache_steps=(64,))  # the runner exists now
    runner = fd.current_runner(tiny)
    assert runner is not None
    real_step = runner.step

    def step() -> torch.Tensor:
        events.append("step")
        return real_step()

    runner.step = step  # type: ignore[method-assign]
    try:
        res = fast_generate(tiny, ids, max_new_tokens=6, mode="eager", cache_steps=(64,),
                            on_token=lambda t: events.append("token"))
    finally:
        del runner.step
    assert res.reused_runner and len(res.ids) == 6 and res.stop_reason == "max_new_tokens"
    # token 0 comes from prefill; then two steps queued before the first decoded token is read, one step per
    # token after that, and the last token is read with nothing left to queue
    assert events == ["token", "step", "step", "token", "step", "token", "step", "token", "step", "token", "token"]
    plain = fast_generate(tiny, ids, max_new_tokens=6, mode="auto", cache_steps=(64,))
    assert plain.path == "generate" and plain.ids == res.ids


@pytest.mark.parametrize("temperature,seed", [(0.0, None), (1.5, 3)])
def test_queued_loop_gives_the_synchronous_loops_tokens(temperature: float, seed: int | None,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """QUEUE_DEPTH 2 against 1 (read each token before queuing the next): the same tokens, greedy and seeded
    sampling, with and without an EOS. On the CPU the eager loop; with KIT_TEST_DEVICE=cuda the CUDA-graph loop,
    whose tokens come back through pinned buffers and events."""
    import os

    device = os.environ.get("KIT_TEST_DEVICE", "cpu")
    torch.manual_seed(4)
    model = _spread(MistralForCausalLM(_tiny_config())).to(device)
    mode = "graph" if device == "cuda" else "eager"
    ids = _prompt(26, seed=24)
    runs = {}
    for depth in (1, 2):
        monkeypatch.setattr(fd, "QUEUE_DEPTH", depth)
        fd.release_runner(model)
        runs[depth] = fast_generate(model, ids, max_new_tokens=16, mode=mode, cache_steps=(64,),
                                    temperature=temperature, seed=seed)
        assert runs[depth].path == mode and runs[depth].stop_reason == "max_new_tokens"
    assert runs[1].ids == runs[2].ids
    eos = runs[1].ids[5]
    stop_at = runs[1].ids.index(eos)
    for depth in (1, 2):
        monkeypatch.setattr(fd, "QUEUE_DEPTH", depth)
        res = fast_generate(model, ids, max_new_tokens=16, mode=mode, cache_steps=(64,), temperature=temperature,
                            seed=seed, eos_token_ids=[eos])
        assert res.ids == runs[1].ids[:stop_at + 1] and res.stop_reason == "eos" and res.reused_runner
    fd.release_runner(model)


def test_a_step_queued_past_eos_costs_nothing(tiny: MistralForCausalLM) -> None:
    """At EOS one more step is already on the device: its token is dropped, and its K/V slot (past the reply)
    does not change the next turn, which gives what a fresh runner gives."""
    ids = _prompt(30, seed=22)
    fd.release_runner(tiny)
    free = fast_generate(tiny, ids, max_new_tokens=10, mode="eager", cache_steps=(128,))
    eos = free.ids[3]
    stop_at = free.ids.index(eos)
    res = fast_generate(tiny, ids, max_new_tokens=10, mode="eager", cache_steps=(128,), eos_token_ids=[eos])
    assert res.ids == free.ids[:stop_at + 1] and res.stop_reason == "eos"
    runner = fd.current_runner(tiny)
    assert runner is not None and int(runner.pos) == ids.shape[1] + stop_at + 1  # the extra step did run
    nxt = _prompt(33, seed=23)
    reused = fast_generate(tiny, nxt, max_new_tokens=8, mode="eager", cache_steps=(128,))
    fd.release_runner(tiny)
    fresh = fast_generate(tiny, nxt, max_new_tokens=8, mode="eager", cache_steps=(128,))
    assert reused.reused_runner and not fresh.reused_runner and reused.ids == fresh.ids


def test_streaming_order_and_text(tiny: MistralForCausalLM) -> None:
    seen: list[int] = []
    res = fast_generate(tiny, _prompt(15, seed=10), max_new_tokens=9, mode="eager", cache_steps=(64,),
                        on_token=seen.append)
    assert seen == res.ids
    seen_gen: list[int] = []
    gen = fast_generate(tiny, _prompt(15, seed=10), max_new_tokens=9, mode="auto", cache_steps=(64,),
                        on_token=seen_gen.append)
    assert gen.path == "generate" and seen_gen == gen.ids

    # text pieces: a decoder whose ids are bytes of UTF-8; half a character must wait for the next id
    raw = "é€ ok".encode()
    pieces: list[str] = []
    stream = IncrementalText(lambda ids: bytes(ids).decode("utf-8", errors="replace"), pieces.append)
    for byte in raw:
        stream(byte)
    assert "".join(pieces) == "é€ ok" and "\ufffd" not in "".join(pieces)
    assert pieces[0] == "é"
    stream(0xE2)  # a character cut off by the end of the stream comes out at flush
    stream.flush()
    assert pieces[-1] == "\ufffd"


def test_streamed_text_decodes_short_windows() -> None:
    """Streaming a long reply decodes a few ids per token (not the whole reply), spaces kept at window starts."""
    words = {i: f"w{i}" for i in range(300)}
    lengths: list[int] = []

    def decode(ids: list[int]) -> str:  # like SentencePiece: a leading space is dropped at the decode start
        lengths.append(len(ids))
        return " ".join(words[i] for i in ids)

    pieces: list[str] = []
    stream = IncrementalText(decode, pieces.append)
    for i in range(300):
        stream(i)
    stream.flush()
    assert "".join(pieces) == decode(list(range(300)))
    assert max(lengths[:-1]) <= 4


def test_runner_reused_across_turns_and_grows_by_step(tiny: MistralForCausalLM) -> None:
    fd.release_runner(tiny)
    steps = (64, 128)
    a = fast_generate(tiny, _prompt(20, seed=11), max_new_tokens=6, mode="eager", cache_steps=steps)
    b = fast_generate(tiny, _prompt(30, seed=12), max_new_tokens=6, mode="eager", cache_steps=steps)
    assert (a.cache_len, a.reused_runner) == (64, False)
    assert (b.cache_len, b.reused_runner) == (64, True)
    c = fast_generate(tiny, _prompt(70, seed=13), max_new_tokens=6, mode="eager", cache_steps=steps)
    assert (c.cache_len, c.reused_runner) == (128, False)
    d = fast_generate(tiny, _prompt(10, seed=14), max_new_tokens=6, mode="eager", cache_steps=steps)
    assert (d.cache_len, d.reused_runner) == (128, True)  # a shorter turn keeps the bigger runner
    # a reused runner (stale cache from a longer turn) gives the same tokens as a fresh one
    fd.release_runner(tiny)
    fresh = fast_generate(tiny, _prompt(10, seed=14), max_new_tokens=6, mode="eager", cache_steps=(128,))
    assert fresh.ids == d.ids and not fresh.reused_runner
    fd.release_runner(tiny)
    assert fd.current_runner(tiny) is None


def test_sampling_seeded_and_top_p_limit(tiny: MistralForCausalLM) -> None:
    ids = _prompt(25, seed=15)
    greedy = fast_generate(tiny, ids, max_new_tokens=10, mode="eager", cache_steps=(64,))
    s1 = fast_generate(tiny, ids, max_new_tokens=10, mode="eager", cache_steps=(64,), temperature=1.5, seed=3)
    s2 = fast_generate(tiny, ids, max_new_tokens=10, mode="eager", cache_steps=(64,), temperature=1.5, seed=3)
    assert s1.ids == s2.ids
    others = [fast_generate(tiny, ids, max_new_tokens=10, mode="eager", cache_steps=(64,), temperature=1.5,
                            seed=s).ids for s in (4, 5)]
    assert any(o != s1.ids for o in others + [greedy.ids])  # sampling really samples
    nucleus = fast_generate(tiny, ids, max_new_tokens=10, mode="eager", cache_steps=(64,), temperature=0.7,
                            top_p=1e-6, seed=9)
    assert nucleus.ids == greedy.ids  # top_p that keeps one token is greedy


def test_fallback_reasons(tiny: MistralForCausalLM) -> None:
    ids = _prompt(40, seed=16)
    expected, _ = _reference(tiny, ids, 5)
    cpu = fast_generate(tiny, ids, max_new_tokens=5, cache_steps=(128,))
    assert cpu.path == "generate" and "CUDA" in cpu.reason and cpu.ids == expected
    graph = fast_generate(tiny, ids, max_new_tokens=5, cache_steps=(128,), mode="graph")
    assert graph.path == "generate" and "CUDA" in graph.reason
    long = fast_generate(tiny, ids, max_new_tokens=5, cache_steps=(16, 32), mode="eager")
    assert long.path == "generate" and "largest cache step (32)" in long.reason and long.ids == expected
    padded_mask = torch.ones_like(ids)
    padded_mask[0, 0] = 0
    padded = fast_generate(tiny, ids, attention_mask=padded_mask, max_new_tokens=5, mode="eager")
    assert padded.path == "generate" and "padded" in padded.reason

    torch.manual_seed(2)
    sliding = MistralForCausalLM(_tiny_config(sliding_window=16)).eval()
    res = fast_generate(sliding, ids, max_new_tokens=3, mode="eager", cache_steps=(128,))
    assert res.path == "generate" and "sliding" in res.reason

    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=128)).eval()
    res = fast_generate(gpt2, ids, max_new_tokens=3, mode="eager", cache_steps=(128,))
    assert res.path == "generate" and "gpt2" in res.reason and len(res.ids) == 3


def test_attention_switch_is_restored(tiny: MistralForCausalLM) -> None:
    before = tiny.config._attn_implementation
    fast_generate(tiny, _prompt(10, seed=17), max_new_tokens=3, mode="eager", cache_steps=(64,))
    assert tiny.config._attn_implementation == before != fd.ATTN_NAME


def test_cache_steps_for_budget() -> None:
    assert cache_steps_for(40_000) == (8192, 16384, 32768, 40_000)
    assert cache_steps_for(8192) == (8192,)
    assert cache_steps_for(10_000) == (8192, 10_000)


def test_generation_fast_path_streams_and_reports(tiny: MistralForCausalLM) -> None:
    """generate_reply's fast branch: the streamer sees every new token once, the notes say which path ran."""
    from types import SimpleNamespace

    from magistral_kit.model import generation
    from magistral_kit.config import KitConfig

    lm = SimpleNamespace(model=tiny, eos_token_ids=[2], context_window=4096,
                         decode=lambda ids: " ".join(str(i) for i in ids if i != 2))
    pieces: list[str] = []
    streamer = generation._TextCallbackStreamer(lm, pieces.append)
    ids = _prompt(12, seed=18)
    out, path, notes, cache_full = generation._fast_decode(lm, ids, torch.ones_like(ids), 7, {"do_sample": False},
                                                           streamer, KitConfig(context_budget=4096), "auto")
    assert len(out) == 7 and path == "generate" and not cache_full and notes == [
        "fast decode not used: CUDA graphs need a CUDA device (model is on cpu)"]
    assert "".join(pieces) == lm.decode(out)


def test_runner_does_not_keep_a_freed_model_alive() -> None:
    """free_models() drops the model; its cached runner (KV cache) must go with it, not pin it in memory."""
    import gc
    import weakref

    torch.manual_seed(3)
    model = MistralForCausalLM(_tiny_config()).eval()
    fast_generate(model, _prompt(10, seed=19), max_new_tokens=3, mode="eager", cache_steps=(64,))
    assert fd.current_runner(model) is not None
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None
