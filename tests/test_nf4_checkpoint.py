"""Pre-quantized NF4 checkpoints on a tiny random Mistral (bitsandbytes 4-bit on the CPU)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, MistralConfig, MistralForCausalLM

from magistral_kit.model import nf4_checkpoint as ck


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bf16")
    torch.manual_seed(0)
    cfg = MistralConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=32, vocab_size=512, sliding_window=None)
    MistralForCausalLM(cfg).to(torch.bfloat16).save_pretrained(folder)
    return folder


def _quantize(source: Path) -> torch.nn.Module:
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.bfloat16)
    return AutoModelForCausalLM.from_pretrained(source, quantization_config=bnb, device_map={"": "cpu"},
                                                dtype=torch.bfloat16).eval()


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.arange(3, 20).view(1, -1)).logits.float()


def _weights(folder: Path) -> Path:
    return next(folder.glob("*.safetensors"))


def test_round_trip_same_logits_and_manifest(source: Path, tmp_path: Path) -> None:
    built: list[int] = []
    build = lambda: built.append(1) or _quantize(source)  # noqa: E731
    model, info = ck.load_or_build(source, "cpu", build, folder=tmp_path / "nf4", on_message=None)
    assert info.path == "built" and built == [1]
    manifest = json.loads((tmp_path / "nf4" / ck.MANIFEST).read_text())
    assert manifest["versions"] == ck.library_versions()
    assert all(m["size"] > 0 and len(m["sha256"]) == 64 for m in manifest["files"].values())
    assert not list(tmp_path.glob("*.partial-*"))  # the temp folder was renamed into place

    again, info2 = ck.load_or_build(source, "cpu", build, folder=tmp_path / "nf4", on_message=None)
    assert info2.path == "prequantized" and built == [1]
    assert type(again.model.layers[0].mlp.up_proj).__name__ == "Linear4bit"
    assert torch.equal(_logits(model), _logits(again))
    ck.verify(tmp_path / "nf4", source, full=True)


def _saved(source: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "nf4"
    ck.save_nf4(_quantize(source), folder, source)
    return folder


def _rebuild_message(source: Path, folder: Path) -> str:
    messages: list[str] = []
    _, info = ck.load_or_build(source, "cpu", lambda: _quantize(source), folder=folder, on_message=messages.append)
    assert info.path == "rebuilt" and messages == [info.message]
    ck.verify(folder, source)  # the rebuilt checkpoint is good again
    return messages[0]


def test_other_library_versions_are_rebuilt(source: Path, tmp_path: Path) -> None:
    folder = _saved(source, tmp_path)
    m = json.loads((folder / ck.MANIFEST).read_text())
    m["versions"]["bitsandbytes"] = "0.40.0"
    (folder / ck.MANIFEST).write_text(json.dumps(m))
    msg = _rebuild_message(source, folder)
    assert "other library versions" in msg and "bitsandbytes 0.40.0" in msg


def test_truncated_file_is_rebuilt(source: Path, tmp_path: Path) -> None:
    folder = _saved(source, tmp_path)
    w = _weights(folder)
    w.write_bytes(w.read_bytes()[:-100])
    assert "damaged" in _rebuild_message(source, folder)


def test_altered_bytes_are_rebuilt(source: Path, tmp_path: Path) -> None:
    folder = _saved(source, tmp_path)
    w = _weights(folder)
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 0xFF
    w.write_bytes(bytes(data))
    assert "does not match its recorded hash" in _rebuild_message(source, folder)


def test_missing_manifest_or_file_is_rebuilt(source: Path, tmp_path: Path) -> None:
    folder = _saved(source, tmp_path)
    (folder / "config.json").unlink()
    assert "config.json is missing" in _rebuild_message(source, folder)
    (folder / ck.MANIFEST).unlink()
    assert f"no {ck.MANIFEST}" in _rebuild_message(source, folder)


def test_failed_save_keeps_old_checkpoint(source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _saved(source, tmp_path)
    before = (folder / ck.MANIFEST).read_text()
    model = _quantize(source)

    def boom(*a: object, **k: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(model, "save_pretrained", boom)
    with pytest.raises(OSError):
        ck.save_nf4(model, folder, source)
    assert (folder / ck.MANIFEST).read_text() == before and not list(tmp_path.glob("*.partial-*"))
    ck.verify(folder, source)


def test_unquantized_model_is_refused(source: Path, tmp_path: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(source)
    with pytest.raises(ck.CheckpointError, match="not quantized"):
        ck.save_nf4(model, tmp_path / "x", source)


def test_default_folder_changes_with_source(source: Path, tmp_path: Path) -> None:
    a = ck.default_folder(source, tmp_path)
    assert a.parent == tmp_path and a.name.startswith(source.name)
    (source / "extra.json").write_text("{}")
    try:
        assert ck.default_folder(source, tmp_path) != a
    finally:
        (source / "extra.json").unlink()
