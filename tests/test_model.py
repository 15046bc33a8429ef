"""The model layer: one load per kernel, reload-and-free on a weight change, clear errors, tekken formatting."""
import pytest

from magistral_kit.model import loading as model_mod
from magistral_kit.config import KitConfig
from magistral_kit.chat.prompt import build_prompt
from magistral_kit.model.loading import GPUUnavailableError, ModelLoadError, load_model


def test_repeated_loads_return_the_same_object(embedded_config):
    first = load_model(embedded_config, progress=False)
    loads = len(model_mod.LOADS)
    again = load_model(embedded_config.replace(temperature=0.9, top_k=2), progress=False)
    assert again is first and len(model_mod.LOADS) == loads


def test_embedded_tokenizer_eos_is_fixed(embedded_lm):
    tok = embedded_lm.tokenizer
    assert tok.eos_token == "<|im_end|>"
    assert tok.convert_tokens_to_ids("<|im_end|>") in embedded_lm.eos_token_ids
    assert embedded_lm.context_window == 8192
    html = embedded_lm._repr_html_()
    for label in ("load time", "parameters", "quantization", "device", "RSS"):
        assert label in html


def test_changing_a_weight_setting_frees_the_old_model(embedded_config, tiny_config):
    old = load_model(embedded_config, progress=False)
    tiny = load_model(tiny_config, progress=False)
    assert tiny is not old and old.model is None  # the old weights were dropped
    assert tiny.freed and "SmolLM2" in tiny.freed and "→" in tiny.freed
    back = load_model(embedded_config, progress=False)
    assert back.freed and back.model is not None


def test_tekken_chat_follows_the_declared_tokenizer_version(tiny_config):
    lm = load_model(tiny_config, progress=False)
    inner = lm.tokenizer.instruct_tokenizer.tokenizer
    assert inner.version.value == "v3"
    ids = lm.encode_chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Again"}])
    inst, end_inst = inner.get_special_token("[INST]"), inner.get_special_token("[/INST]")
    assert ids[0] == inner.bos_id and ids.count(inst) == 2 and ids[-1] == end_inst
    # v3 has no system-prompt token: the system prompt goes into the LAST user message
    last = ids[len(ids) - 1 - ids[::-1].index(inst):]
    assert inner.encode("Be brief.", bos=False, eos=False)[0] in last


def test_system_prompt_file_and_override(tmp_path, tiny_mistral_dir):
    import shutil

    folder = tmp_path / "with-prompt"
    shutil.copytree(tiny_mistral_dir, folder)
    (folder / "SYSTEM_PROMPT.txt").write_text("Think step by step.")
    lm = load_model(KitConfig(model=str(folder), device="cpu"), progress=False)
    assert lm.system_prompt == "Think step by step."
    override = KitConfig(model=str(folder), device="cpu", system_prompt="Override.")
    assert load_model(override, progress=False) is lm  # the prompt is not a weight setting
    plan = build_prompt(lm, override, "Hi", [], [])
    assert plan.messages[0] == {"role": "system", "content": "Override."}
    plan = build_prompt(lm, override.replace(system_prompt=None), "Hi", [], [])
    assert plan.messages[0]["content"] == "Think step by step."


def test_missing_folder_and_unknown_hub_id_are_clear():
    with pytest.raises(ModelLoadError, match="does not exist.*Fix"):
        load_model(KitConfig(model="./no/such/model"))
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache.*huggingface-cli download"):
        load_model(KitConfig(model="nobody-here/no-such-model"))


def test_folder_without_config_is_clear(tmp_path):
    with pytest.raises(ModelLoadError, match="not a model folder"):
        load_model(KitConfig(model=str(tmp_path)))


def test_cuda_asked_without_gpu_is_clear(tiny_mistral_dir):
    with pytest.raises(GPUUnavailableError, match="no CUDA GPU.*Fix"):
        load_model(KitConfig(model=str(tiny_mistral_dir), quantization="nf4", device="cuda"))


def test_magistral_sized_model_refuses_the_cpu(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps(
        {"hidden_size": 5120, "num_hidden_layers": 40, "intermediate_size": 32768, "vocab_size": 131072,
         "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128}))
    (tmp_path / "tekken.json").write_text("{}")
    with pytest.raises(GPUUnavailableError, match="23.6 B parameters"):
        load_model(KitConfig(model=str(tmp_path), device="auto"))
