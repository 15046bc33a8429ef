"""Pre-quantized NF4 checkpoints: quantize from bf16 once, reload the 4-bit weights directly afterwards.

Why: quantizing Magistral from its bf16 weights on every kernel start is many times slower than loading saved
4-bit weights (both measured by ``bench/gpu_chat.py``: ``bench/GPU.md``, load table).

A checkpoint is a ``save_pretrained`` folder of the bitsandbytes model plus ``NF4_MANIFEST.json``: the torch /
transformers / bitsandbytes versions that wrote it, the source folder's fingerprint, and every file's size,
SHA-256 and a sampled digest. Loading checks versions, sizes and the sampled digest (fast: a few MB read per
file); ``verify(full=True)`` re-hashes everything. A checkpoint written by other library versions, for other
source weights, or damaged (missing, truncated or altered file) is reported with a clear message and rebuilt by
`load_or_build`. Writes are atomic: a temp folder beside the target, renamed into place once complete.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from magistral_kit.config import data_dir

MANIFEST = "NF4_MANIFEST.json"
FORMAT = 1
_SAMPLE_BLOCKS = 16
_SAMPLE_BYTES = 1 << 16


class CheckpointError(RuntimeError):
    """The pre-quantized checkpoint cannot be used; the message says why (it is then rebuilt)."""


@dataclass
class LoadInfo:
    """How the model came to be loaded (shown in the model's diagnostics)."""

    path: str  # "prequantized" or "rebuilt" or "built"
    folder: Path
    seconds: float
    message: str = ""
    save_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def library_versions() -> dict[str, str]:
    """The versions that decide whether a saved 4-bit checkpoint is readable as written (local build tags dropped)."""
    import bitsandbytes
    import torch
    import transformers

    return {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__,
            "bitsandbytes": bitsandbytes.__version__}


def source_fingerprint(source: Path) -> str:
    """Short hash of the source folder's config and weight files (names, sizes, mtimes): other weights, other key."""
    source = Path(source).resolve()
    h = hashlib.sha256(str(source).encode())
    for p in sorted(source.iterdir()):
        if p.suffix in (".json", ".safetensors", ".bin") and p.is_file() and p.name != MANIFEST:
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def default_folder(source: Path, root: Path | None = None) -> Path:
    """Where the checkpoint of ``source`` lives: ``data/models/nf4/<name>-<fingerprint>``."""
    root = Path(root) if root is not None else data_dir() / "models" / "nf4"
    return root / f"{Path(source).resolve().name}-{source_fingerprint(source)}"


def _sampled_digest(path: Path) -> str:
    """SHA-256 over a few evenly spaced blocks (first and last included): cheap damage detection at load time."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= _SAMPLE_BLOCKS * _SAMPLE_BYTES:
            h.update(f.read())
        else:
            step = (size - _SAMPLE_BYTES) / (_SAMPLE_BLOCKS - 1)
            for i in range(_SAMPLE_BLOCKS):
                f.seek(int(i * step))
                h.update(f.read(_SAMPLE_BYTES))
    return h.hexdigest()


def _full_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def save_nf4(model: Any, folder: Path, source: Path | None = None) -> Path:
    """Save a loaded bitsandbytes NF4 model as a checkpoint with its manifest, atomically; returns the folder."""
    folder = Path(folder)
    if getattr(getattr(model, "config", None), "quantization_config", None) is None:
        raise CheckpointError("the model is not quantized (no quantization_config): nothing to save as NF4")
    tmp = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        files = {}
        for p in sorted(tmp.iterdir()):
            files[p.name] = {"size": p.stat().st_size, "sha256": _full_digest(p), "sampled": _sampled_digest(p)}
        manifest = {
            "format": FORMAT, "versions": library_versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                         time.gmtime()),
            "source": str(Path(source).resolve()) if source else None,
            "source_fingerprint": source_fingerprint(source) if source else None,
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        old = folder.with_name(f"{folder.name}.old-{os.getpid()}")
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def verify(folder: Path, source: Path | None = None, full: bool = False) -> dict:
    """The manifest if the checkpoint is usable here; raises `CheckpointError` naming the problem otherwise."""
    folder = Path(folder)
    mpath = folder / MANIFEST
    if not mpath.exists():
        raise CheckpointError(f"{folder} has no {MANIFEST} (incomplete or not written by the kit)")
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
        versions = manifest["versions"]
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{folder}/{MANIFEST} is unreadable ({type(exc).__name__})") from None
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{folder} has manifest format {manifest.get('format')}, expected {FORMAT}")
    now = library_versions()
    diff = [f"{k} {versions.get(k)} (now {v})" for k, v in now.items() if versions.get(k) != v]
    if diff:
        raise CheckpointError(f"{folder} was written by other library versions: {', '.join(diff)}")
    if source is not None and manifest.get("source_fingerprint") not in (None, source_fingerprint(source)):
        raise CheckpointError(f"{folder} was made from other source weights than {source}")
    for name, meta in files.items():
        p = folder / name
        if not p.exists():
            raise CheckpointError(f"{folder} is damaged: {name} is missing")
        if p.stat().st_size != meta["size"]:
            raise CheckpointError(f"{folder} is damaged: {name} has {p.stat().st_size} bytes, "
                                  f"the manifest says {meta['size']}")
        if _sampled_digest(p) != meta["sampled"] or (full and _full_digest(p) != meta["sha256"]):
            raise CheckpointError(f"{folder} is damaged: {name} does not match its recorded hash")
    return manifest


def load_nf4(folder: Path, device: str = "cuda", source: Path | None = None) -> Any:
    """Load a verified NF4 checkpoint onto ``device``; raises `CheckpointError` if it is unusable."""
    import torch
    from transformers import AutoModelForCausalLM

    verify(folder, source)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, device_map={"": device}, dtype=torch.bfloat16)
    except Exception as exc:  # a checkpoint that passes the manifest but still fails to load is treated as damaged
        raise CheckpointError(f"{folder} failed to load: {type(exc).__name__}: {str(exc)[:200]}") from None
    return model.eval()


def load_or_build(source: Path, device: str, build: Callable[[], Any], folder: Path | None = None,
                  save: bool = True, on_message: Callable[[str], None] | None = print) -> tuple[Any, LoadInfo]:
    """The NF4 model of ``source``: from its pre-quantized checkpoint when usable, else ``build()`` and save it.

    ``build`` quantizes from the source weights (the slow path). An unusable checkpoint is reported through
    ``on_message`` and replaced.
    """
    folder = Path(folder) if folder is not None else default_folder(source)
    t = time.perf_counter()
    message = ""
    if folder.exists():
        try:
            model = load_nf4(folder, device, source)
            return model, LoadInfo("prequantized", folder, time.perf_counter() - t)
        except CheckpointError as exc:
            message = f"pre-quantized checkpoint not used, rebuilding it from {source}: {exc}"
            if on_message:
                on_message(message)
    t = time.perf_counter()
    model = build()
    seconds = time.perf_counter() - t
    info = LoadInfo("rebuilt" if message else "built", folder, seconds, message)
    if save:
        t = time.perf_counter()
        try:
            save_nf4(model, folder, source)
            info.save_seconds = time.perf_counter() - t
        except OSError as exc:  # a full disk must not lose the loaded model
            info.notes.append(f"could not save the NF4 checkpoint to {folder}: {exc}")
    return model, info
