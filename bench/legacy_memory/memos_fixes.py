"""Every workaround for a MemOS (MemoryOS 2.0.33) bug, each named after the bug it avoids.

Facts behind them: ../shared/notes/memos.md (verified by running MemOS). Each has a test in
tests/test_memos_fixes.py that shows the bug with plain MemOS and that the workaround prevents it.
MemOS is imported only through `import_memos()`.
"""
from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Generator
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

        def embed(self, texts: list[str]) -> list[list[float]]:
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



def check_collection_dimension(vecdb: Any, expected: int) -> str | None:
    """Drop and recreate a collection whose vector size differs from `expected`; returns a note.

    Bug avoided: MemOS's QdrantVecDB finds an existing collection of another dimension, logs a warning and
    reuses it; the first add of a real vector then fails (and with qdrant-client <= 1.18 poisons the
    client). The caller rebuilds the index from the durable copy afterwards.
    """
    name = vecdb.config.collection_name
    size = vecdb.client.get_collection(name).config.params.vectors.size
    if size == expected:
        return None
    vecdb.client.delete_collection(name)
    vecdb.create_collection()
    return f"index collection had {size}-dim vectors, expected {expected}: recreated"


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


def relax_index_fsync(vecdb: Any) -> bool:
    """Let qdrant's local SQLite skip its per-point fsync (PRAGMA synchronous=OFF). Not a MemOS bug: a
    kit choice. The index is disposable — the fsync'd journal is the durable copy, and on open a damaged
    or out-of-step index is rebuilt from it — so paying one fsync per point (10k points: ~10 s to minutes
    on a busy disk) buys nothing. Returns False (and changes nothing) if qdrant's internals differ."""
    try:
        for col in vecdb.client._client.collections.values():
            storage = getattr(col, "storage", None)
            if storage is not None:
                storage.storage.execute("PRAGMA synchronous=OFF")
        return True
    except Exception:  # noqa: BLE001 - an optimisation only
        return False


def reopen_client(vecdb: Any) -> None:
    """Replace the client with a fresh one on the same path (qdrant re-reads its storage from disk)."""
    from qdrant_client import QdrantClient

    close_vecdb(vecdb)
    path = vecdb.config.path
    vecdb.client = QdrantClient(location=":memory:") if path == ":memory:" else QdrantClient(path=path)
    relax_index_fsync(vecdb)


def index_healthy(vecdb: Any) -> bool:
    """A cheap probe that fails when local mode's in-RAM arrays are out of step."""
    try:
        name = vecdb.config.collection_name
        vecdb.client.count(name)
        vecdb.client.scroll(name, limit=1, with_payload=False, with_vectors=False)
        size = vecdb.client.get_collection(name).config.params.vectors.size
        vecdb.client.query_points(name, query=[1.0] * size, limit=1, with_payload=False)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not usable"
        return False


def call_with_reopen(vecdb: Any, fn: Callable[[], Any], notes: list[str], what: str) -> Any:
    """Run a qdrant operation; if it fails and the client's in-RAM state is broken, reopen and retry once.

    Bug avoided: in qdrant local mode (MemOS's default) a failing upsert can leave the client's arrays
    half-updated (`deleted` N+1 entries, vectors N): every later search raises 'operands could not be
    broadcast together with shapes (N+1,) (N,)' — the crash that made the original project switch memory
    off. The on-disk storage is consistent, so a fresh client recovers it. Only a persistent index can be
    recovered this way; a `:memory:` one is rebuilt by the caller.
    """
    try:
        return fn()
    except Exception as first:
        if index_healthy(vecdb):
            raise
        if vecdb.config.path == ":memory:":
            raise
        reopen_client(vecdb)
        notes.append(f"reopened qdrant client after failed {what} ({type(first).__name__}: {first})"[:300])
        return fn()


def search_with_scores(vecdb: Any, vector: Any, limit: int) -> list[tuple[str, float]]:
    """(id, score) pairs, best first, without payloads or vectors.

    Bug avoided: `GeneralTextMemory.search` sorts by score and then drops it (no way to show or threshold
    relevance), and fetches every hit's vector and payload (with_vectors=True) that a chat never uses.
    """
    points = vecdb.client.query_points(
        collection_name=vecdb.config.collection_name, query=vector, limit=limit,
        with_payload=False, with_vectors=False).points
    return [(str(p.id), float(p.score)) for p in points]


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
