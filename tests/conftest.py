"""Shared fixtures: ONE embedded model load and ONE tiny random Mistral for the whole test session."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

from magistral_kit.config import KitConfig


@pytest.fixture(scope="session")
def embedded_config() -> KitConfig:
    return KitConfig(temperature=0.0, max_new_tokens=48)


@pytest.fixture(scope="session")
def tiny_mistral_dir(tmp_path_factory):
    """A 2-layer random-weight Mistral with mistral-common's tekken tokenizer, built once per session."""
    from magistral_kit.model.random_mistral import build_random_mistral

    return build_random_mistral(tmp_path_factory.mktemp("models") / "tiny-mistral", shape="tiny")


@pytest.fixture(scope="session")
def tiny_config(tiny_mistral_dir) -> KitConfig:
    return KitConfig(model=str(tiny_mistral_dir), quantization="nf4", device="cpu", temperature=0.0,
                     max_new_tokens=12)


@pytest.fixture()
def embedded_lm(embedded_config):
    """The embedded default (cached process-wide: loaded once however many tests ask)."""
    from magistral_kit.model.loading import load_model

    return load_model(embedded_config, progress=False)


SYSTEM_PROMPT_FILE = "You are Magistral. Think first, then answer the user."


@pytest.fixture(scope="session")
def magistral_dirs(tmp_path_factory):
    """Tiny random Mistrals with generated tekken tokenizers of Magistral's versions (built on first use).

    v7 is Magistral-Small-2506's ([SYSTEM_PROMPT], reasoning as <think> text); v11 and v13 are later
    releases' ([THINK] / [/THINK] control tokens). Each folder has a SYSTEM_PROMPT.txt, as Magistral's do.
    """
    from magistral_kit.model.random_mistral import build_random_mistral

    built: dict[str, object] = {}

    def get(version: str):
        if version not in built:
            built[version] = build_random_mistral(tmp_path_factory.mktemp("models") / f"magistral-{version}",
                                                  shape="tiny", tokenizer=version, system_prompt=SYSTEM_PROMPT_FILE)
        return built[version]

    return get
