"""Shared fixtures: ONE embedded model load and ONE tiny random Mistral for the whole test session."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The kit's NF4 Triton kernels run on the CPU through Triton's interpreter. Triton reads the variable when a
# kernel is defined, and other tests import the kernel module long before tests/test_nf4_kernel.py is collected,
# so it is set here, first. KIT_TEST_DEVICE=cuda runs the same kernel tests compiled on a GPU.
if os.environ.get("KIT_TEST_DEVICE", "cpu") == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"

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


# --- LoCoMo: tests marked `locomo` need the real data; everything else runs on the generated set ------------------
def _locomo_found():
    from magistral_kit.evaluation.locomo import find_locomo

    return find_locomo()


def pytest_report_header(config):
    found = _locomo_found()
    return [f"LoCoMo data: {found}" if found else
            "LoCoMo data: none ($MAGISTRAL_LOCOMO unset, no ../shared/locomo): tests marked 'locomo' are "
            "deselected; `pytest -m locomo` runs them and they fail without data"]


def pytest_collection_modifyitems(config, items):
    """Without LoCoMo data, deselect the `locomo` tests unless they were asked for with -m (then they fail).
    Without KIT_TEST_DEVICE=cuda, deselect the `gpu` tests (they run on the GPU machine; see bench/GPU.md)."""
    if os.environ.get("KIT_TEST_DEVICE", "cpu") != "cuda":
        on_gpu = [item for item in items if item.get_closest_marker("gpu")]
        if on_gpu:
            items[:] = [item for item in items if not item.get_closest_marker("gpu")]
            config.hook.pytest_deselected(items=on_gpu)
    if _locomo_found() is not None or "locomo" in (config.getoption("markexpr") or ""):
        return
    needs = [item for item in items if item.get_closest_marker("locomo")]
    if needs:
        items[:] = [item for item in items if not item.get_closest_marker("locomo")]
        config.hook.pytest_deselected(items=needs)


@pytest.fixture()
def locomo_path():
    """The real LoCoMo data; a test that needs it FAILS (never skips) when there is none."""
    found = _locomo_found()
    if found is None or not found.exists():
        pytest.fail("this test needs the real LoCoMo data: set MAGISTRAL_LOCOMO=/path/to/locomo (the folder of "
                    "per-conversation files or locomo10.json) or put it at ../shared/locomo", pytrace=False)
    return found
