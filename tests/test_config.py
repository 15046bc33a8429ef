from pathlib import Path

import pytest

from magistral_kit.config import ConfigError, KitConfig, data_dir


def test_defaults_are_the_original_projects():
    c = KitConfig()
    assert (c.temperature, c.max_new_tokens, c.context_budget, c.history_turns, c.top_k) == (0.1, 4096, 40_000, 20, 5)
    assert c.model == "embedded"


def test_wrong_type_names_the_field_and_the_fix():
    with pytest.raises(ConfigError) as err:
        KitConfig(top_k="five")
    msg = str(err.value)
    assert "KitConfig.top_k" in msg and "'five'" in msg and "Fix" in msg and "top_k=5" in msg


def test_out_of_range_and_unknown_fields_are_explained():
    with pytest.raises(ConfigError, match="temperature"):
        KitConfig(temperature=-1)
    with pytest.raises(ConfigError, match="no field 'max_tokens'.*max_new_tokens"):
        KitConfig(max_tokens=10)
    with pytest.raises(ConfigError, match="quantization"):
        KitConfig(quantization="int3")


def test_cube_dir_bare_name_resolves_under_data_cubes(tmp_path):
    assert KitConfig(cube_dir="demo").cube_path == data_dir() / "cubes" / "demo"
    assert KitConfig(cube_dir=str(tmp_path / "x")).cube_path == tmp_path / "x"
    assert KitConfig(cube_dir="./rel/c").cube_path == Path("rel/c").resolve()


def test_weight_key_changes_only_with_weight_settings():
    base = KitConfig()
    assert base.replace(temperature=0.7, top_k=3).weight_key() == base.weight_key()
    assert base.replace(quantization="nf4").weight_key() != base.weight_key()


def test_config_renders_as_a_table_marking_changes():
    html = KitConfig(top_k=3)._repr_html_()
    assert "<table>" in html and "<code>top_k</code>" in html and "<b>3</b>" in html
    assert "Magistral card: 0.7" in html  # both temperature recommendations are documented
