"""Drive JupyterLab in headless Chromium (Playwright over Debian's /usr/bin/chromium): start a private lab
server, open a notebook, run all cells, take screenshots. Used by tests/test_browser.py, and runnable to
look at the notebooks as a researcher sees them:

    python tests/lab_browser.py --run notebooks/02_memory_inspector.ipynb          # run, screenshots in tmp/browser/
    python tests/lab_browser.py --theme dark tmp/browser/02_memory_inspector.executed.ipynb   # the same run, dark

Why its own server: a fresh token, a free port on 127.0.0.1, a throw-away settings folder (theme, no news
pop-up) and a working folder of notebook copies, so a researcher's running lab and cubes are never touched.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
# what Chromium needs here: root in a container (no sandbox), no GPU, and no calls to Google's services,
# which this machine's closed network refuses
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
INSTALL_HINT = ("Chromium is needed for the browser test and was not found at /usr/bin/chromium. Install it "
                "with:  sudo apt-get update && sudo apt-get install -y chromium   (Debian/Ubuntu; the CI script "
                ".ci/run does this), or set MAGISTRAL_KIT_CHROMIUM=/path/to/chromium-or-chrome")
THEMES = {"light": "JupyterLab Light", "dark": "JupyterLab Dark"}


def find_chromium() -> str | None:
    """The Chromium (or Chrome) binary to drive: $MAGISTRAL_KIT_CHROMIUM, else a standard path."""
    given = os.environ.get("MAGISTRAL_KIT_CHROMIUM")
    if given:
        return given if Path(given).is_file() else None
    for path in CHROMIUM_CANDIDATES:
        if Path(path).is_file():
            return path
    return shutil.which("chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A JupyterLab server on 127.0.0.1 with a token, serving `root` (see `lab_server`)."""

    def __init__(self, root: Path, port: int, token: str, proc: subprocess.Popen, log: Path) -> None:
        self.root, self.port, self.token, self.proc, self.log = root, port, token, proc, log

    def url(self, notebook: str) -> str:
        """The notebook in a fresh workspace (``reset``: no tabs restored from an earlier page)."""
        return f"http://127.0.0.1:{self.port}/lab/tree/{notebook}?token={self.token}&reset"

    def shutdown_kernels(self) -> int:
        """End every session's kernel (a notebook run earlier keeps its model and CPU otherwise)."""
        base = f"http://127.0.0.1:{self.port}/api/sessions"
        headers = {"Authorization": f"token {self.token}"}
        with urllib.request.urlopen(urllib.request.Request(base, headers=headers), timeout=10) as r:
            sessions = json.loads(r.read())
        for s in sessions:
            req = urllib.request.Request(f"{base}/{s['id']}", headers=headers, method="DELETE")
            urllib.request.urlopen(req, timeout=30).close()
        return len(sessions)


def write_settings(settings_dir: Path, theme: str) -> None:
    """JupyterLab user settings: the theme, and no news/update pop-up over the notebook."""
    apputils = settings_dir / "@jupyterlab" / "apputils-extension"
    apputils.mkdir(parents=True, exist_ok=True)
    (apputils / "themes.jupyterlab-settings").write_text(json.dumps({"theme": THEMES[theme]}))
    (apputils / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))


@contextmanager
def lab_server(root: Path, theme: str = "light", timeout_s: float = 90) -> Iterator[Lab]:
    """Start JupyterLab (this Python's) on a free port with a token, serving `root`; stop it afterwards."""
    root = Path(root).resolve()
    port, token = free_port(), secrets.token_hex(16)
    home = root / ".lab"
    settings = home / "settings"
    write_settings(settings, theme)
    log = home / "server.log"
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTERLAB_WORKSPACES_DIR": str(home / "ws"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "PYTHONPATH": os.pathsep.join(
               [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--ServerApp.open_browser=False", "--LabApp.news_url=None"]
    if hasattr(os, "getuid") and os.getuid() == 0:
        cmd.append("--allow-root")
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start (exit {proc.poll()}); its log:\n"
                                       + log.read_text()[-3000:]) from None
                time.sleep(0.5)
        yield Lab(root, port, token, proc, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def browser_page(user_data_dir: Path, width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A Playwright page in headless Debian Chromium with a fresh profile (raises with INSTALL_HINT if the
    browser is missing)."""
    from playwright.sync_api import sync_playwright

    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError(INSTALL_HINT)
    shutil.rmtree(user_data_dir, ignore_errors=True)
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(user_data_dir), executable_path=exe, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height})
        try:
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            yield page
        finally:
            ctx.close()


# --- in the page --------------------------------------------------------------------------------------
NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden)"


def open_notebook(page: Any, lab: Lab, notebook: str, timeout_ms: int = 120_000) -> None:
    """Open a notebook (alone, in a fresh workspace, other kernels shut down) and wait until its kernel is
    connected and idle."""
    lab.shutdown_kernels()
    page.goto(lab.url(notebook), wait_until="domcontentloaded", timeout=timeout_ms)
    page.wait_for_selector(f"{NOTEBOOK} .jp-Cell", timeout=timeout_ms)
    wait_kernel_idle(page, timeout_ms)


def wait_kernel_idle(page: Any, timeout_ms: int = 120_000) -> None:
    """Wait until the status bar says the notebook's kernel is connected and idle."""
    page.wait_for_function(
        """() => { const s = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) '
                     + '.jp-Notebook-ExecutionIndicator');
                   const bar = document.querySelector('#jp-main-statusbar');
                   return s && s.getAttribute('data-status') === 'idle' && bar
                          && /\| Idle/.test(bar.innerText); }""", timeout=timeout_ms, polling=250)


def run_all(page: Any) -> None:
    """Run > Run All Cells, through the menu as a person would. Should JupyterLab still ask which kernel
    to use (a kernel that was connecting), the notebook's own (the first choice) is accepted."""
    page.click("li.lm-MenuBar-item:has-text('Run')")
    page.click("li.lm-Menu-item[data-command='runmenu:run-all']")
    dialog = page.locator(".jp-Dialog")
    try:
        dialog.wait_for(timeout=2000)
    except Exception:  # playwright's TimeoutError: no dialog, the cells are running
        return
    dialog.locator(".jp-mod-accept").click()


def wait_all_ran(page: Any, timeout_ms: int, shot: Path | None = None) -> None:
    """Wait until every code cell has run (a number in its prompt) and the kernel is idle. On a time-out
    the error says which prompts were still empty or running (and `shot` gets a screenshot)."""
    try:
        _wait_all_ran(page, timeout_ms)
    except Exception as exc:
        if shot is not None:
            page.screenshot(path=str(shot))
        prompts = page.eval_on_selector_all(f"{NOTEBOOK} .jp-CodeCell .jp-InputArea-prompt",
                                            "els => els.map(e => e.textContent)")
        raise TimeoutError(f"not every cell ran in {timeout_ms / 1000:.0f} s; prompts: {prompts}; "
                           f"screenshot: {shot}") from exc


def _wait_all_ran(page: Any, timeout_ms: int) -> None:
    page.wait_for_function(
        """() => { const nb = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
                   const prompts = [...nb.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')];
                   const ind = nb.querySelector('.jp-Notebook-ExecutionIndicator');
                   const idle = ind && ind.getAttribute('data-status') === 'idle';
                   const running = prompts.some(p => p.textContent.includes('*'));
                   // an error stops Run All: the cells after it keep an empty prompt
                   const failed = nb.querySelector('.jp-OutputArea-output[data-mime-type='
                                                   + '"application/vnd.jupyter.stderr"]') !== null;
                   return prompts.length > 0 && idle && !running
                          && (failed || prompts.every(p => /\\[\\d+\\]/.test(p.textContent))); }""",
        timeout=timeout_ms, polling=1000)


def bad_outputs(page: Any) -> list[str]:
    """The text of every error or stderr output area in the open notebook (tracebacks render as stderr)."""
    return page.eval_on_selector_all(
        f"{NOTEBOOK} .jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
        "els => els.map(e => e.innerText.slice(0, 300))")


def screenshot_tour(page: Any, out_dir: Path, prefix: str, step_px: int = 850) -> list[Path]:
    """Scroll the open notebook top to bottom, one screenshot per screen; returns the files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    scroller = f"{NOTEBOOK} .jp-WindowedPanel-outer"
    page.eval_on_selector(scroller, "e => e.scrollTo(0, 0)")
    shots, n = [], 0
    while True:
        page.wait_for_timeout(700)
        path = out_dir / f"{prefix}-{n:02d}.png"
        page.screenshot(path=str(path))
        shots.append(path)
        moved = page.eval_on_selector(
            scroller, f"e => {{ const before = e.scrollTop; e.scrollBy(0, {step_px}); return e.scrollTop - before; }}")
        n += 1
        if moved <= 0 or n >= 40:
            return shots


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="screenshots of notebooks in JupyterLab (headless Chromium)")
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--theme", choices=sorted(THEMES), default="light")
    parser.add_argument("--run", action="store_true", help="run all cells before the screenshots")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "tmp" / "browser")
    parser.add_argument("--timeout", type=int, default=600, help="seconds for running one notebook")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=JSON",
                        help="a parameter to inject as papermill would, e.g. --param 'LOCOMO=\"/data/locomo\"'")
    args = parser.parse_args(argv)
    work = args.out / f"lab-{args.theme}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    params = {k: json.loads(v) for k, v in (p.split("=", 1) for p in args.param)}
    for nb in args.notebooks:
        if params:  # injected as papermill would (an "injected-parameters" cell after "parameters")
            import nbformat
            from papermill.iorw import load_notebook_node
            from papermill.parameterize import parameterize_notebook

            nbformat.write(parameterize_notebook(load_notebook_node(str(nb)), params, kernel_name="python3",
                                                 language="python"), work / nb.name)
        else:
            shutil.copy(nb, work / nb.name)
    with lab_server(work, theme=args.theme) as lab, browser_page(args.out / f"profile-{args.theme}") as page:
        for nb in args.notebooks:
            open_notebook(page, lab, nb.name)
            if args.run:
                run_all(page)
                wait_all_ran(page, args.timeout * 1000, shot=args.out / f"{nb.stem}-{args.theme}-timeout.png")
                page.keyboard.press("Control+s")  # keep the run: --theme other, without --run, shows it
                page.wait_for_timeout(1500)
                shutil.copy(work / nb.name, args.out / f"{nb.stem}.executed.ipynb")
            shots = screenshot_tour(page, args.out, f"{nb.stem}-{args.theme}")
            print(f"{nb.name}: {len(shots)} screenshots, bad outputs: {bad_outputs(page)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
