"""Fast batch-1 decoding for (NF4) Mistral models: static KV cache, eager prefill, CUDA-graph decode step.

Why: plain ``model.generate`` on an NF4 Magistral is launch-bound: every token pays for Python and many small
kernel launches, far more than the 4-bit kernels need (figures: bench/GPU.md, from bench/results/).
Capturing one decode step as a CUDA graph removes the launch cost, and the loop queues the next step before it
reads the current token, so the GPU does not idle while the host reads, streams and checks a token; a decode
attention that folds the query heads of each KV head into one matmul reads the grouped-query cache once instead
of copying it 4x (``repeat_kv``); ``torch.compile`` inside the graph fuses the small ops that remain.

The cache is sized in a few fixed steps (8k, 16k, 32k, the context budget): one runner (cache + captured graph)
is kept per loaded model and reused across chat turns while the conversation fits, so a turn re-captures
(or recompiles) only when the conversation outgrows its step. The same loop runs eagerly (no graph) on any
device, which is what CI checks against plain generate on a tiny random Mistral.

Where the fast loop cannot run (CPU in 'auto' mode, another model shape, a prompt longer than the largest
step, padding) ``fast_generate`` falls back to ``model.generate`` and records why in ``FastResult.reason``.

On CUDA, the decode step of an NF4 model runs through the kit's own Triton kernels (``nf4_kernel.py``: NF4
matrix-vector products on bitsandbytes' packed weights, fused norm/rotary/attention; the large MLP products on
the CUDA GEMV of ``nf4_cuda.py``, ``FastResult.gemv`` says which); prefill and any model those kernels decline
stay on bitsandbytes, and ``FastResult.kernel_reason`` says why.
"""
from __future__ import annotations

import gc
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Sequence

import torch

ATTN_NAME = "kit_gqa_decode"
DEFAULT_CACHE_STEPS: tuple[int, ...] = (8192, 16384, 32768)
PREFILL_CHUNK = 2048
QUEUE_DEPTH = 2  # decode steps on the device at once: the next is queued before the current token is read
SUPPORTED_MODEL_TYPES = ("mistral", "llama")

Mode = Literal["auto", "graph", "eager"]
TokenCallback = Callable[[int], None]


# --------------------------------------------------------------------------------------------------------------
# attention: one function for prefill (q_len > 1, eager) and decode (q_len == 1, captured)
# --------------------------------------------------------------------------------------------------------------
def gqa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention over a static cache: positions past the current one are masked from ``position_ids``.

    query ``[b, H, q, D]``; key/value ``[b, KV, S, D]`` (the whole static cache, S = its length).
    Decode (q == 1): the H/KV query heads sharing one KV head become the rows of one matmul, so the cache is
    read once and nothing is copied. Prefill: SDPA over the filled part of the cache only.
    Returns ``[b, q, H, D]`` like transformers' own attention functions.
    """
    pos = kwargs.get("position_ids")
    if pos is None:
        raise RuntimeError("kit attention needs position_ids (the fast decode loop passes them)")
    b, n_heads, q_len, dim = query.shape
    n_kv = key.shape[1]
    groups = n_heads // n_kv
    scale = scaling if scaling is not None else dim ** -0.5
    if q_len == 1:
        q = query.reshape(b, n_kv, groups, dim)
        scores = torch.matmul(q, key.transpose(-1, -2)).float() * scale  # [b, KV, G, S]
        slots = torch.arange(key.shape[2], device=key.device)
        future = slots.view(1, 1, 1, -1) > pos.reshape(b, 1, 1, 1)
        probs = scores.masked_fill(future, float("-inf")).softmax(dim=-1).to(value.dtype)
        out = torch.matmul(probs, value)  # [b, KV, G, D]
        return out.reshape(b, 1, n_heads, dim), None
    start = int(pos[0, 0])  # eager prefill only: a host read is fine here
    end = start + q_len
    k = key[:, :, :end].repeat_interleave(groups, dim=1)
    v = value[:, :, :end].repeat_interleave(groups, dim=1)
    if start == 0:
        out = torch.nn.functional.scaled_dot_product_attention(query, k, v, is_causal=True, scale=scale)
    else:
        allowed = torch.arange(end, device=key.device).view(1, -1) <= (
            torch.arange(start, end, device=key.device).view(-1, 1))
        out = torch.nn.functional.scaled_dot_product_attention(query, k, v, attn_mask=allowed, scale=scale)
    return out.transpose(1, 2).contiguous(), None


def _register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, gqa_attention)


class _KitAttention:
    """Switch the model to the kit attention for the duration of a fast call (plain generate keeps its own)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.config = model.config
        self.saved: Any = None

    def __enter__(self) -> None:
        _register_attention()
        self.saved = self.config._attn_implementation
        self.config._attn_implementation_internal = ATTN_NAME

    def __exit__(self, *exc: Any) -> None:
        self.config._attn_implementation_internal = self.saved


# --------------------------------------------------------------------------------------------------------------
# results and helpers
# --------------------------------------------------------------------------------------------------------------
@dataclass
class FastResult:
    """What one generation produced and which path produced it (shown in the chat diagnostics)."""

    ids: list[int]
    path: str  # "graph", "compiled", "eager" or "generate"
    reason: str = ""  # why plain generate ran instead ("" when the fast loop ran)
    stop_reason: str = ""  # "eos", "max_new_tokens", "cache_full"
    prompt_tokens: int = 0
    cache_len: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    capture_seconds: float = 0.0  # one-time cost paid by this call (0 when the runner was reused)
    compile_seconds: float = 0.0  # torch.compile and/or the first (JIT-compiling) call of the kit's kernels
    reused_runner: bool = False
    kernel: str = ""  # what ran the decode step's linears: "kit-nf4" or "bitsandbytes"
    kernel_reason: str = ""  # why the kit's NF4 kernels were not used ("" when they were)
    gemv: str = ""  # with the kit's kernels: which GEMV ran the linears (CUDA or Triton) and why
    logits: list[torch.Tensor] = field(default_factory=list, repr=False)  # per step, only if asked (tests)

    @property
    def new_tokens(self) -> int:
        return len(self.ids)

    @property
    def decode_tok_per_s(self) -> float:
        """Tokens after the first (which comes from prefill) over the decode time."""
        return (len(self.ids) - 1) / self.decode_seconds if self.decode_seconds > 0 and len(self.ids) > 1 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "reason": self.reason, "stop_reason": self.stop_reason,
            "prompt_tokens": self.prompt_tokens, "new_tokens": self.new_tokens, "cache_len": self.cache_len,
            "prefill_seconds": round(self.prefill_seconds, 4), "decode_seconds": round(self.decode_seconds, 4),
            "decode_tok_per_s": round(self.decode_tok_per_s, 2), "capture_seconds": round(self.capture_seconds, 3),
            "compile_seconds": round(self.compile_seconds, 3), "reused_runner": self.reused_runner,
            "kernel": self.kernel, "kernel_reason": self.kernel_reason, "gemv": self.gemv,
        }


class IncrementalText:
    """Turn a stream of token ids into text pieces as they come (for on_token), never splitting a character.

    Decodes only a short window (the last emitted piece's tokens + the new ones), not the whole reply each
    token: re-decoding a long reply every token would cost a sizeable share of a fast decode step. The window's
    leading tokens are decoded twice and subtracted, so tokenizers that drop a leading space at the start of a
    decode still get spaces right. A trailing U+FFFD (half a multi-byte character) waits for the next token.
    """

    def __init__(self, decode: Callable[[list[int]], str], on_text: Callable[[str], None]) -> None:
        self.decode, self.on_text = decode, on_text
        self.ids: list[int] = []
        self.prefix_offset = 0  # start of the window
        self.read_offset = 0  # tokens before this are emitted

    def __call__(self, token_id: int) -> None:
        self.ids.append(int(token_id))
        prefix = self.decode(self.ids[self.prefix_offset:self.read_offset]) if self.read_offset > \
            self.prefix_offset else ""
        text = self.decode(self.ids[self.prefix_offset:])
        if len(text) <= len(prefix) or text.endswith("\ufffd"):
            return
        self.on_text(text[len(prefix):])
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)

    def flush(self) -> None:
        """Emit what a trailing half character held back (call once the stream has ended)."""
        prefix = self.decode(self.ids[self.prefix_offset:self.read_offset])
        text = self.decode(self.ids[self.prefix_offset:])
        if len(text) > len(prefix):
            self.on_text(text[len(prefix):])
        self.prefix_offset = self.read_offset = len(self.ids)


def cache_steps_for(context_budget: int, steps: Iterable[int] = DEFAULT_CACHE_STEPS) -> tuple[int, ...]:
    """The cache sizes a session may use: the fixed steps below the budget, and the budget itself."""
    out = sorted({s for s in steps if s < context_budget} | {int(context_budget)})
    return tuple(out)


def unsupported_reason(model: torch.nn.Module) -> str:
    """'' when the fast loop understands this model, else why not (the model is then run by plain generate)."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return f"model type {getattr(cfg, 'model_type', None)!r} is not one of {SUPPORTED_MODEL_TYPES}"
    if getattr(cfg, "sliding_window", None) is not None:
        return f"sliding-window attention ({cfg.sliding_window}) is not supported by the fast loop"
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or not len(layers) or not hasattr(layers[0], "self_attn"):
        return "model has no model.layers[*].self_attn (not a Mistral/Llama decoder)"
    if not hasattr(model, "_can_set_attn_implementation") or not model._can_set_attn_implementation():
        return "model does not dispatch attention through transformers' AttentionInterface"
    return ""


class _TokenStreamer:
    """transformers streamer that forwards new token ids to an on_token callback (fallback path)."""

    def __init__(self, on_token: TokenCallback) -> None:
        self.on_token = on_token
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate first puts the prompt
            self.prompt_seen = True
            return
        for t in value.reshape(-1).tolist():
            self.on_token(int(t))

    def end(self) -> None:
        pass


class _TokenFetch:
    """Reads a queued decode step's token back to the host without waiting for the steps queued after it: on
    CUDA a pinned buffer and an event per slot (the copy is queued right behind the step that made the token);
    elsewhere a plain read, the device being synchronous."""

    def __init__(self, device: torch.device, slots: int) -> None:
        self.cuda = device.type == "cuda"
        self.n = 0
        self.bufs = [torch.empty(1, dtype=torch.long, pin_memory=True) for _ in range(slots)] if self.cuda else []
        self.events = [torch.cuda.Event() for _ in range(slots)] if self.cuda else []

    def put(self, tok: torch.Tensor) -> Callable[[], int]:
        if not self.cuda:
            return lambda: int(tok.item())
        buf, event = self.bufs[self.n % len(self.bufs)], self.events[self.n % len(self.events)]
        self.n += 1
        buf.copy_(tok.reshape(1), non_blocking=True)
        event.record()

        def read() -> int:
            event.synchronize()
            return int(buf[0])
        return read


def _pick(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Next token from last-position logits ``[1, V]`` (float32): greedy at temperature 0, else top-p sampling."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = (logits / temperature).softmax(dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = (sorted_p.cumsum(dim=-1) - sorted_p) > top_p  # keep the smallest set reaching top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).reshape(-1)


# --------------------------------------------------------------------------------------------------------------
# runner: one static cache (+ optional graph) per loaded model
# --------------------------------------------------------------------------------------------------------------
class DecodeRunner:
    """A static KV cache of one size for one model, with the decode step (optionally) captured as a CUDA graph.

    Kept alive between calls so that chat turns reuse the graph; a new prompt simply overwrites the cache
    from position 0 (stale slots past the current position are masked in attention).
    """

    def __init__(self, model: torch.nn.Module, cache_len: int, use_graph: bool, compile: bool) -> None:
        from transformers import StaticCache

        self.model = model  # model <-> runner is a cycle: freeing the model frees its runner (gc)
        self.cache_len = cache_len
        self.use_graph = use_graph
        self.compile = compile and use_graph
        self.device = next(model.parameters()).device
        self.cache = StaticCache(config=model.config, max_cache_len=cache_len)
        self.ids = torch.zeros((1, 1), dtype=torch.long, device=self.device)
        self.pos = torch.zeros((1,), dtype=torch.long, device=self.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_logits: torch.Tensor | None = None
        self.kit, self.kit_reason = _kit_decoder(model, self.device)
        self.step_fn: Callable[[], torch.Tensor] = self._step
        if self.compile:
            self.step_fn = torch.compile(self._step, mode="default", dynamic=False)
        self.captures = 0

    def _step(self) -> torch.Tensor:
        """One decode step at ``self.pos`` for token ``self.ids``: writes K/V there, returns float32 logits [1, V]."""
        if self.kit is not None:
            return self.kit.step(self.ids, self.pos, self.cache)
        out = self.model(
            input_ids=self.ids, position_ids=self.pos.view(1, 1), cache_position=self.pos,
            past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :].float()

    def prefill(self, input_ids: torch.Tensor, chunk: int = PREFILL_CHUNK) -> torch.Tensor:
        """Eager prefill in chunks (bounded activation memory); returns the last position's float32 logits."""
        n = input_ids.shape[1]
        logits = None
        for start in range(0, n, chunk):
            part = input_ids[:, start:start + chunk].to(self.device)
            pos = torch.arange(start, start + part.shape[1], device=self.device)
            out = self.model(input_ids=part, position_ids=pos.view(1, -1), cache_position=pos,
                             past_key_values=self.cache, use_cache=True, logits_to_keep=1)
            logits = out.logits[:, -1, :].float()
        assert logits is not None
        return logits

    def ensure_graph(self) -> tuple[float, float]:
        """Capture the decode step (compiling it first if asked); returns (capture_s, compile_s), 0 if done before.

        Must run after a prefill (the cache tensors are allocated then) with ``ids``/``pos`` holding the real
        next step: the warm-up steps write the same K/V that the first replay writes again.
        """
        if not self.use_graph or self.graph is not None:
            return 0.0, 0.0
        compile_s = 0.0
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            t = time.perf_counter()
            self.step_fn()  # compiles here when compile=True; the kit's Triton kernels compile on first use
            torch.cuda.synchronize(self.device)
            if self.compile or self.kit is not None:
                compile_s = time.perf_counter() - t
            for _ in range(2):
                self.step_fn()
        torch.cuda.current_stream(self.device).wait_stream(side)
        torch.cuda.synchronize(self.device)
        t = time.perf_counter()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = self.step_fn()
        torch.cuda.synchronize(self.device)
        self.graph, self.graph_logits = graph, logits
        self.captures += 1
        return time.perf_counter() - t, compile_s

    def step(self) -> torch.Tensor:
        if self.graph is not None:
            self.graph.replay()
            assert self.graph_logits is not None
            return self.graph_logits
        return self._step()

    def release(self) -> None:
        self.graph = None
        self.graph_logits = None
        self.cache = None  # type: ignore[assignment]


_RUNNER_ATTR = "_kit_decode_runner"  # kept on the model itself, so it lives and dies with the model


def _kit_decoder(model: torch.nn.Module, device: torch.device) -> tuple[Any, str]:
    """The kit's NF4 decode step for this model (CUDA only), or (None, why bitsandbytes decodes instead)."""
    if device.type != "cuda":
        return None, f"the kit's NF4 kernels run on CUDA (model is on {device.type})"
    try:
        from magistral_kit.model.nf4_kernel import prepare_decode
    except Exception as exc:  # an import failure must not cost the fast loop itself
        return None, f"nf4_kernel not importable: {type(exc).__name__}: {exc}"
    return prepare_decode(model)


def release_runner(model: torch.nn.Module) -> None:
    """Drop the model's cached runner (its KV cache and graph) and give the memory back."""
    runner = model.__dict__.pop(_RUNNER_ATTR, None)
    if runner is not None:
        runner.release()
        del runner
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def current_runner(model: torch.nn.Module) -> DecodeRunner | None:
    return model.__dict__.get(_RUNNER_ATTR)


def _runner_for(model: torch.nn.Module, needed: int, steps: Sequence[int], use_graph: bool,
                compile: bool) -> tuple[DecodeRunner, bool]:
    """Reuse the model's runner if it is big enough and of the same kind; else replace it by the next step."""
    have = current_runner(model)
    if (have is not None and have.cache_len >= needed and have.cache_len in steps
            and have.use_graph == use_graph and have.compile == (compile and use_graph)):
        return have, True
    size = next((s for s in sorted(steps) if s >= needed), max(steps))
    release_runner(model)
    runner = DecodeRunner(model, size, use_graph, compile)
    model.__dict__[_RUNNER_ATTR] = runner
    return runner, False


# --------------------------------------------------------------------------------------------------------------
# public entry
# --------------------------------------------------------------------------------------------------------------
def _plain_generate(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                    max_new_tokens: int, eos: list[int], temperature: float, top_p: float,
                    on_token: TokenCallback | None, reason: str) -> FastResult:
    dev = next(model.parameters()).device
    ids = input_ids.to(dev)
    mask = attention_mask.to(dev) if attention_mask is not None else torch.ones_like(ids)
    kw: dict[str, Any] = {"do_sample": False} if temperature <= 0 else {
        "do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
    if temperature <= 0:
        kw.update(temperature=None, top_p=None, top_k=None)
    t = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             eos_token_id=eos or None, pad_token_id=(eos or [0])[0],
                             streamer=_TokenStreamer(on_token) if on_token else None, **kw)
    new = out[0, ids.shape[1]:].tolist()
    stop = "eos" if new and new[-1] in eos else "max_new_tokens"
    return FastResult(ids=new, path="generate", reason=reason, stop_reason=stop, prompt_tokens=ids.shape[1],
                      decode_seconds=time.perf_counter() - t)


def fast_generate(
    model: torch.nn.Module,
    input_ids: torch.Tensor | Sequence[int],
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 256,
    eos_token_ids: Iterable[int] = (),
    temperature: float = 0.0,
    top_p: float = 1.0,
    on_token: TokenCallback | None = None,
    cache_steps: Sequence[int] = DEFAULT_CACHE_STEPS,
    compile: bool = False,
    mode: Mode = "auto",
    seed: int | None = None,
    return_logits: bool = False,
    prefill_chunk: int = PREFILL_CHUNK,
) -> FastResult:
    """Generate up to ``max_new_tokens`` for one prompt, stopping at any EOS id; stream ids to ``on_token``.

    mode: 'graph' = CUDA-graph decode (CUDA only), 'eager' = the same loop without a graph (any device),
    'auto' = graph on CUDA, plain generate elsewhere. ``compile`` compiles the captured step (one-time cost,
    reported in ``compile_seconds``). Falls back to ``model.generate`` with ``reason`` set where the loop
    cannot run. ``return_logits`` keeps each step's logits on the CPU (tests).
    """
    if not torch.is_tensor(input_ids):
        input_ids = torch.tensor([list(input_ids)], dtype=torch.long)
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    eos = sorted({int(e) for e in eos_token_ids})
    device = next(model.parameters()).device
    steps = tuple(sorted({int(s) for s in cache_steps}))
    n_prompt = int(input_ids.shape[1])

    reason = ""
    if input_ids.shape[0] != 1:
        reason = f"batch size {input_ids.shape[0]} (the fast loop is batch 1)"
    elif attention_mask is not None and bool((attention_mask == 0).any()):
        reason = "padded prompt (attention_mask has zeros)"
    elif mode in ("auto", "graph") and device.type != "cuda":
        reason = f"CUDA graphs need a CUDA device (model is on {device.type})"
    elif not steps or n_prompt + 1 > steps[-1]:
        reason = f"prompt of {n_prompt} tokens does not fit the largest cache step ({steps[-1] if steps else 0})"
    else:
        reason = unsupported_reason(model)
    if reason:
        return _plain_generate(model, input_ids, attention_mask, max_new_tokens, eos, temperature, top_p,
                               on_token, reason)

    use_graph = mode in ("auto", "graph")
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
    with torch.inference_mode(), _KitAttention(model):
        runner, reused = _runner_for(model, n_prompt + max_new_tokens, steps, use_graph, compile)
        res = FastResult(ids=[], path=("compiled" if runner.compile else "graph") if use_graph else "eager",
                         prompt_tokens=n_prompt, cache_len=runner.cache_len, reused_runner=reused,
                         kernel="kit-nf4" if runner.kit is not None else "bitsandbytes",
                         kernel_reason=runner.kit_reason,
                         gemv=getattr(runner.kit, "gemv_note", "") if runner.kit is not None else "")
        sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
        sync()
        t = time.perf_counter()
        logits = runner.prefill(input_ids, prefill_chunk)
        tok = _pick(logits, temperature, top_p, generator)
        first = int(tok.item())
        res.prefill_seconds = time.perf_counter() - t
        if return_logits:
            res.logits.append(logits[0].cpu())
        res.ids.append(first)
        if on_token:
            on_token(first)
        pos = n_prompt
        if first in eos:
            res.stop_reason = "eos"
        elif max_new_tokens <= 1:
            res.stop_reason = "max_new_tokens"
        else:
            runner.ids.fill_(first)
            runner.pos.fill_(pos)
            res.capture_seconds, res.compile_seconds = runner.ensure_graph()
            fetch = _TokenFetch(device, QUEUE_DEPTH + 1)
            queued: deque[tuple[Callable[[], int], torch.Tensor | None]] = deque()
            sync()
            t = time.perf_counter()
            while True:
                # the next step goes on the device before this one's token is read: the GPU never waits for
                # the host's per-token work (the read, streaming, the EOS check, the next launch)
                while (len(queued) < QUEUE_DEPTH and pos < runner.cache_len
                       and len(res.ids) + len(queued) < max_new_tokens):
                    logits = runner.step()
                    tok = _pick(logits, temperature, top_p, generator)
                    kept = logits.clone() if return_logits else None  # the graph's buffer is reused next step
                    runner.ids.copy_(tok.view(1, 1))
                    runner.pos.add_(1)
                    pos += 1
                    queued.append((fetch.put(tok), kept))
                if not queued:
                    res.stop_reason = "max_new_tokens" if len(res.ids) >= max_new_tokens else "cache_full"
                    break
                read, kept = queued.popleft()
                nxt = read()
                if kept is not None:
                    res.logits.append(kept[0].cpu())
                res.ids.append(nxt)
                if on_token:
                    on_token(nxt)
                if nxt in eos:
                    res.stop_reason = "eos"  # a step queued after it is discarded (its K/V slot is past the reply)
                    break
            sync()  # counted: the device is free again when the call returns
            res.decode_seconds = time.perf_counter() - t
    return res
