"""Every workaround for a MemOS (MemoryOS 2.0.33) bug, each named after the bug it avoids.

Facts behind them: ../shared/notes/memos.md (verified by running MemOS). Each has a test in
tests/test_memos_fixes.py that shows the bug with plain MemOS and that the workaround prevents it.
MemOS is imported only through `import_memos()`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any

_IMPORT_LOCK = threading.Lock()
_BACKENDS_REGISTERED = False
LLM_BACKEND = "kit_callable"
EMBEDDER_BACKEND = "kit_embedder"
_LLM_CALLABLES: dict[str, Callable[[list[dict], int], str]] = {}


# --- import side effects -----------------------------------------------------------------------------


def import_memos(memos_log_level: int = logging.ERROR) -> Any:
    """Import MemOS without its import-time side effects.

    Bugs avoided: `import memos` (1) runs `load_dotenv()`, so a stray `.env` in the working directory lands
    in os.environ; (2) writes `.memos/` (logs, default qdrant folder) into the current directory unless
    MEMOS_BASE_PATH is set; (3) configures the ROOT logger with a console handler and an INFO file handler,
    and MemOS logs full prompts and model replies at INFO: users' chats end up in a log file. Here
    MEMOS_BASE_PATH defaults under tmp/, load_dotenv is a no-op during the import, the handlers MemOS put
    on the root logger are removed (and closed), the import's own noise (langchain_text_splitters, NACOS_*)
    is not logged, and the `memos` logger is capped at ERROR so prompts (INFO) and per-construction
    warnings ('Qdrant is running in local mode') never reach whatever logging the kit or the user set up.
    """
    import sys

    with _IMPORT_LOCK:
        if "memos" in sys.modules and getattr(sys.modules["memos"], "__kit_imported__", False):
            return sys.modules["memos"]
        from magistral_kit.config import tmp_dir

        os.environ.setdefault("MEMOS_BASE_PATH", str(tmp_dir() / "memos"))
        import dotenv
        import dotenv.main

        root = logging.getLogger()
        before_handlers = list(root.handlers)
        before_level = root.level
        saved = (dotenv.load_dotenv, dotenv.main.load_dotenv)
        dotenv.load_dotenv = dotenv.main.load_dotenv = _no_dotenv
        logging.disable(logging.WARNING)
        try:
            import memos
            import memos.log  # noqa: F401 - the module that configures logging
        finally:
            logging.disable(logging.NOTSET)
            dotenv.load_dotenv, dotenv.main.load_dotenv = saved
            for handler in list(root.handlers):
                if handler not in before_handlers or _is_memos_handler(handler):
                    root.removeHandler(handler)
                    try:
                        handler.close()
                    except Exception:  # noqa: BLE001 - closing a foreign handler must not fail the import
                        pass
            root.setLevel(before_level)
        logging.getLogger("memos").setLevel(memos_log_level)
        memos.__kit_imported__ = True
        return memos


def _is_memos_handler(handler: logging.Handler) -> bool:
    """MemOS's dictConfig gives its handlers its ContextFilter: found even when memos was imported before."""
    return any(type(f).__module__ == "memos.log" for f in handler.filters) or \
        type(handler).__name__ == "ConcurrentTimedRotatingFileHandler"


def _no_dotenv(*args: Any, **kwargs: Any) -> bool:
    return False


# --- LLM backend: hand MemOS the already-loaded model ------------------------------------------------


def register_llm(name: str, generate: Callable[[list[dict], int], str]) -> dict[str, Any]:
    """Make `generate(messages, max_new_tokens) -> str` usable as a MemOS extractor LLM.

    Bug avoided: MemOS's `huggingface` backend always loads its own copy of the model (device_map='auto',
    no dtype/quantization knob, tokenizer with force_download=True which fails offline) and caches by an
    md5 of the whole config, so chat + extractor = two models. Returns the `extractor_llm` config dict.
    """
    register_backends()
    _LLM_CALLABLES[name] = generate
    return {"backend": LLM_BACKEND, "config": {"model_name_or_path": name, "max_tokens": 256}}


def register_backends() -> None:
    """Register the kit's LLM and embedder backends in MemOS's factories (before any config names them)."""
    global _BACKENDS_REGISTERED
    if _BACKENDS_REGISTERED:
        return
    import_memos()
    from memos.configs.embedder import BaseEmbedderConfig, EmbedderConfigFactory
    from memos.configs.llm import BaseLLMConfig, LLMConfigFactory
    from memos.embedders.base import BaseEmbedder
    from memos.embedders.factory import EmbedderFactory
    from memos.llms.base import BaseLLM
    from memos.llms.factory import LLMFactory

    class KitCallableLLMConfig(BaseLLMConfig):
        """`model_name_or_path` names a callable registered with `register_llm`; nothing is loaded."""

    class KitCallableLLM(BaseLLM):
        def __init__(self, config: KitCallableLLMConfig) -> None:
            self.config = config

        def generate(self, messages: list[dict], **kwargs: Any) -> str:
            fn = _LLM_CALLABLES.get(self.config.model_name_or_path)
            if fn is None:
                raise RuntimeError(
                    f"no generate function registered as {self.config.model_name_or_path!r}. Fix: call "
                    f"memos_fixes.register_llm(name, generate) in this process before extracting.")
            return fn(messages, int(kwargs.get("max_tokens", self.config.max_tokens)))

        def generate_stream(self, messages: list[dict], **kwargs: Any) -> Generator[str, None, None]:
            yield self.generate(messages, **kwargs)

    class KitEmbedderConfig(BaseEmbedderConfig):
        """`model_name_or_path` is the kit's embedder name ('embedded' or a folder)."""

    class KitEmbedder(BaseEmbedder):
        """MemOS's SenTranEmbedder loads a new SentenceTransformer (trust_remote_code=True) per config and
        shows a progress bar per call; this one reuses the kit's process-wide embedder."""

        def __init__(self, config: KitEmbedderConfig) -> None:
            from magistral_kit.memory.embedding import get_embedder

            self.config = config
            self.kit = get_embedder(config.model_name_or_path)
            self.pending: tuple[list[str], Any] | None = None  # see precomputed_vectors

        def embed(self, texts: list[str]) -> list[list[float]]:
            import numpy as np

            if self.pending is not None and list(texts) == self.pending[0]:
                vectors, self.pending = self.pending[1], None
                return np.asarray(vectors, dtype=np.float32).tolist()
            return self.kit.encode(list(texts)).tolist()

    LLMConfigFactory.backend_to_class[LLM_BACKEND] = KitCallableLLMConfig
    LLMFactory.backend_to_class[LLM_BACKEND] = KitCallableLLM
    EmbedderConfigFactory.backend_to_class[EMBEDDER_BACKEND] = KitEmbedderConfig
    EmbedderFactory.backend_to_class[EMBEDDER_BACKEND] = KitEmbedder
    _BACKENDS_REGISTERED = True


# --- qdrant through MemOS ----------------------------------------------------------------------------


def quiet_construct(fn: Callable[[], Any]) -> Any:
    """Build a MemOS object without its per-construction warnings.

    Bug avoided: every GeneralTextMemory construction emits pydantic serializer warnings (MemOS's singleton
    cache model_dumps configs whose `config` field is typed dict but holds a model) and qdrant's 'payload
    indexes have no effect in local mode' (MemOS creates them unconditionally).
    """
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Pydantic serializer warnings.*")
        warnings.filterwarnings("ignore", message=".*Payload indexes have no effect.*")
        return fn()



def close_vecdb(vecdb: Any) -> None:
    """Close MemOS's qdrant client (idempotent).

    Bug avoided: QdrantVecDB has no close(); the client (and qdrant's folder lock) lives until garbage
    collection, so re-running a notebook cell that opens the same cube fails with 'Storage folder ... is
    already accessed by another instance'.
    """
    client = getattr(vecdb, "client", None)
    if client is not None:
        try:
            client.close()
        except Exception:  # noqa: BLE001 - closing a broken client is best effort
            pass


@contextlib.contextmanager
def precomputed_vectors(embedder: Any, texts: Sequence[str], vectors: Any) -> Iterator[None]:
    """Within the block, the kit embedder backend returns `vectors` when MemOS embeds exactly `texts`.

    Bug avoided: `GeneralTextMemory.add` / `update` always embed `item.memory` themselves; there is no way
    to hand them a vector. The kit embeds the memory's index text (speaker, date, neighbouring turns:
    `retrieval.index_text`), not its stored text, and has the vectors already (one embedding per memory,
    not two). Any other embed call inside the block (a different text list) is computed normally.
    """
    if not hasattr(embedder, "pending"):
        raise TypeError(f"{type(embedder).__name__} is not the kit's embedder backend ({EMBEDDER_BACKEND}); "
                        f"precomputed vectors cannot be handed to it")
    embedder.pending = (list(texts), vectors)
    try:
        yield
    finally:
        embedder.pending = None


def memos_search_with_scores(text_mem: Any, query: str, top_k: int) -> list[tuple[Any, float]]:
    """MemOS's own `text_mem.search(query, top_k)`, unchanged, with each item's score kept: (item, score).

    Bug avoided: `GeneralTextMemory.search` sorts the vector DB's results by score and then drops the score
    (no way to show or threshold relevance). The scores are taken from the vector-DB call MemOS makes inside
    its search; the items and their order are exactly what MemOS returns.
    """
    db = text_mem.vector_db
    seen: dict[str, float] = {}
    real = db.search

    def recording(*args: Any, **kwargs: Any) -> Any:
        results = real(*args, **kwargs)
        for r in results:
            seen[str(r.id)] = float(r.score) if r.score is not None else float("nan")
        return results

    db.search = recording
    try:
        items = text_mem.search(query, top_k)
    finally:
        del db.search  # the instance attribute goes; the class method is back
    return [(item, seen.get(str(item.id), float("nan"))) for item in items]


# --- extraction --------------------------------------------------------------------------------------


def extraction_prompt(conversation: str) -> str:
    """MemOS's general_text extraction prompt for `conversation` ('role:content' lines), built like
    `GeneralTextMemory.extract` builds it.

    Bug avoided: `GeneralTextMemory.extract` parses the reply itself and crashes on anything but the exact
    JSON (prose → {} → KeyError 'memory list'; empty → IndexError; only JSONDecodeError is retried), so
    the kit uses MemOS's template and parses the reply itself (magistral_kit.memory.extraction).
    """
    import_memos()
    from memos.templates.mem_reader_prompts import SIMPLE_STRUCT_MEM_READER_PROMPT

    return SIMPLE_STRUCT_MEM_READER_PROMPT.replace("${conversation}", conversation).replace(
        "${custom_tags_prompt}", "")


def extraction_template() -> str:
    import_memos()
    from memos.templates.mem_reader_prompts import SIMPLE_STRUCT_MEM_READER_PROMPT

    return SIMPLE_STRUCT_MEM_READER_PROMPT


_THINK_BLOCK = re.compile(r"<think>.*?</think>|\[THINK\].*?\[/THINK\]", re.S | re.I)
_THINK_OPEN = re.compile(r"<think>|\[THINK\]", re.I)


def strip_reasoning(text: str) -> tuple[str, str]:
    """(answer, reasoning): removes every closed `<think>…</think>` / `[THINK]…[/THINK]` block; an unclosed
    opening tag means the whole rest is reasoning (a truncated reply).

    Bug avoided: MemOS's `remove_think_prefix` option (`memos.llms.utils.remove_thinking_tags`) only strips
    a LEADING `<think>…</think>` and knows nothing of Magistral's `[THINK]` tokens or of an unclosed block
    (a truncated reply), so reasoning gets parsed (and stored) as the answer.
    """
    reasoning = [m.group(0) for m in _THINK_BLOCK.finditer(text)]
    answer = _THINK_BLOCK.sub("", text)
    opened = _THINK_OPEN.search(answer)
    if opened:
        reasoning.append(answer[opened.start():])
        answer = answer[:opened.start()]
    # a close tag without its opening (the opening was part of the prompt): everything before is reasoning
    for close in ("</think>", "[/THINK]"):
        idx = answer.lower().rfind(close.lower())
        if idx >= 0:
            reasoning.insert(0, answer[:idx + len(close)])
            answer = answer[idx + len(close):]
    return answer.strip(), "\n".join(reasoning)
