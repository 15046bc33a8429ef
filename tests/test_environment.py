"""environment.yml (conda) and pyproject.toml must describe the same environment."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _norm(name):
    return re.sub(r"[-_.]+", "-", name.strip().lower())


def _pins(specs):
    out = {}
    for spec in specs:
        name, _, version = spec.partition("==")
        assert version, f"{spec!r} is not pinned with =="
        out[_norm(name)] = version.strip()
    return out


def test_environment_yml_and_pyproject_name_the_same_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    py = _pins(project["project"]["dependencies"] + project["tool"]["magistral-kit"]["no-deps"])
    text = (ROOT / "environment.yml").read_text()
    yml = _pins(re.findall(r"^\s+- ([A-Za-z0-9_.\-]+==\S+)\s*$", text, re.M)
                + re.findall(r"no-deps: (\S+)", text))
    assert yml == py
    assert re.search(r"^\s+- python=3\.11\s*$", text, re.M)


def test_lock_agrees_with_the_pins():
    lock = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line:
            name, _, version = line.partition("==")
            lock[_norm(name)] = version.strip()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for name, version in _pins(project["project"]["dependencies"]).items():
        assert lock.get(name) == version, f"requirements.lock has {name}=={lock.get(name)}, pyproject {version}"


def test_makefile_installs_the_no_deps_pins():
    """`make setup` installs exactly pyproject's no-deps list with --no-deps (NVRTC for the CUDA GEMV tests too)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    line = re.search(r"pip install -q --no-deps (.+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert sorted(line.split()) == sorted(project["tool"]["magistral-kit"]["no-deps"])
