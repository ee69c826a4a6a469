"""Driving the demo page in a real browser: ``app.py`` in a child process on a free port of 127.0.0.1, and headless
Chromium through Playwright, pointed at the system's Chromium (Debian's ``chromium`` package; no browser is
downloaded). Used by the browser test and ``scripts/bench_app.py``.

    with serve(["--model", "runs/x/model"]) as url, open_page(url) as page:
        upload_image(page, "scene.jpg")
        seconds = ask(page, "Which shape is red?")
        shown = read_page(page)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from read.app.page import IDS, PENDING
from read.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
# Set to a Chrome/Chromium executable to use that one instead of the first found on PATH.
CHROMIUM_ENV = "READ_CHROMIUM"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Headless, and quiet on a closed network: no GPU, no sandbox (root in containers), no background requests.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


class BrowserNotFound(UserError):
    """No Chromium executable: the message says how to install one."""


@dataclass
class PageState:
    """What the page shows after an answer.

    Attributes:
        status: the status line (answer summary or error).
        answer: the answer box.
        overlay_size: (width, height) of the mask picture as decoded by the browser, or None when there is none.
        similarity_size: (width, height) of the similarity picture, or None.
        mask_links: download URLs of the mask PNGs, in order.
    """

    status: str
    answer: str
    overlay_size: tuple[int, int] | None
    similarity_size: tuple[int, int] | None
    mask_links: list[str]


def find_chromium() -> str:
    """Path of the Chromium to drive: ``$READ_CHROMIUM``, else the first of :data:`CHROMIUM_NAMES` on PATH.

    Raises:
        BrowserNotFound: none is installed.
    """
    named = os.environ.get(CHROMIUM_ENV)
    if named:
        if not (os.path.isfile(named) and os.access(named, os.X_OK)):
            raise BrowserNotFound(f"${CHROMIUM_ENV}={named} is not an executable file")
        return named
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise BrowserNotFound(
        "no Chromium found (looked for " + ", ".join(CHROMIUM_NAMES) + " on PATH): install Debian's package "
        "(`apt-get install chromium`; scripts/test.sh does this when run as root) or set "
        f"${CHROMIUM_ENV} to a Chrome/Chromium executable"
    )


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(
    app_args: Sequence[str], *, port: int | None = None, timeout_s: float = 120.0, log: Path | None = None
) -> Iterator[str]:
    """Run ``app.py app_args --host 127.0.0.1 --port PORT`` until the block ends; yields the page's URL.

    Arguments:
        app_args: ``app.py`` flags (``--model`` ...).
        port: default: a free one.
        timeout_s: how long the server may take to answer its first request.
        log: file for the server's output (default: a pipe read back only if it fails to start).

    Raises:
        RuntimeError: the server exited or did not answer in time (with the end of its output).
    """
    port = port or free_port()
    url = f"http://127.0.0.1:{port}/"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, str(ROOT / "app.py"), *app_args, "--host", "127.0.0.1", "--port", str(port)]
    out = open(log, "w+b") if log is not None else subprocess.PIPE  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {proc.returncode} before serving:\n{_tail(proc, out)}")
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"app.py did not answer on {url} within {timeout_s:.0f} s:\n{_tail(proc, out)}")
            time.sleep(0.25)
        yield url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        if log is not None:
            out.close()  # type: ignore[union-attr]


def _tail(proc: subprocess.Popen, out: Any, chars: int = 4000) -> str:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=15)
    if proc.stdout is not None:
        text = proc.stdout.read()
    else:
        out.seek(0)
        text = out.read()
    return text.decode("utf-8", "replace")[-chars:]


@contextlib.contextmanager
def open_page(url: str, *, width: int = 1400, height: int = 1100, timeout_s: float = 60.0) -> Iterator[Any]:
    """Headless Chromium on ``url``, once the page has drawn its Ask button; yields the Playwright ``Page``.

    Raises:
        BrowserNotFound: no Chromium (see :func:`find_chromium`).
    """
    from playwright.sync_api import sync_playwright

    executable = find_chromium()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=list(CHROMIUM_FLAGS))
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(timeout_s * 1000)
            page.goto(url)
            page.wait_for_selector(f"#{IDS['ask']}")
            yield page
        finally:
            browser.close()


def upload_image(page: Any, path: str | Path) -> None:
    """Put the image file ``path`` into the page's image input and wait until the upload has finished (an image
    already there is removed first, so that the wait cannot end on the old one)."""
    if page.query_selector(f"#{IDS['image']} img") is not None:
        clear_image(page)
    page.set_input_files(f"#{IDS['image']} input[type=file]", str(path))
    page.wait_for_selector(f"#{IDS['image']} img")


def clear_image(page: Any) -> None:
    """Remove the image from the page's image input (its clear button)."""
    page.locator(f"#{IDS['image']} button[aria-label='Remove Image']").first.click()
    page.wait_for_selector(f"#{IDS['image']} img", state="detached")


def set_slider(page: Any, key: str, value: float) -> None:
    """Move the page's slider ``key`` (a key of ``IDS``: "num_points", "t_pos", ...) to ``value``, as dragging it
    would, and wait until its number box shows the value."""
    slider = f"#{IDS[key]} input[type=range]"
    page.wait_for_selector(slider, state="visible")
    page.eval_on_selector(
        slider,
        "(e, v) => { e.value = v; e.dispatchEvent(new Event('input', {bubbles: true}));"
        " e.dispatchEvent(new Event('change', {bubbles: true})); }",
        str(value),
    )
    page.wait_for_function(
        "([box, v]) => Number(document.querySelector(box).value) === v",
        arg=[f"#{IDS[key]} input[type=number]", float(value)],
    )


def ask(page: Any, question: str, *, timeout_s: float = 300.0) -> float:
    """Type ``question``, press Ask and wait until the answer is on the page.

    Returns:
        seconds from the click until the answer and its pictures are shown.
    """
    page.fill(f"#{IDS['question']} textarea", question)
    done = int(page.evaluate("() => window.readAnswered || 0"))
    start = time.perf_counter()
    page.click(f"#{IDS['ask']}")
    page.wait_for_function(f"() => (window.readAnswered || 0) > {done}", timeout=timeout_s * 1000)
    page.wait_for_function(  # the answer's own status line, not the one shown while answering
        "([el, pending]) => document.querySelector(el).innerText.trim() !== pending",
        arg=[f"#{IDS['status']}", PENDING],
        timeout=timeout_s * 1000,
    )
    for key in ("overlay", "similarity"):  # pictures shown: wait until the browser has decoded them
        page.wait_for_function(
            f"() => Array.from(document.querySelectorAll('#{IDS[key]} img')).every(i => i.complete)",
            timeout=timeout_s * 1000,
        )
    return time.perf_counter() - start


def read_page(page: Any) -> PageState:
    """The status line, the answer, the sizes of the pictures and the mask download links."""

    def size(key: str) -> tuple[int, int] | None:
        got = page.evaluate(
            f"() => {{ const i = document.querySelector('#{IDS[key]} img');"
            " return i ? [i.naturalWidth, i.naturalHeight] : null; }"
        )
        return (int(got[0]), int(got[1])) if got else None

    links = page.evaluate(f"() => Array.from(document.querySelectorAll('#{IDS['masks']} a[href]')).map(a => a.href)")
    return PageState(
        status=page.inner_text(f"#{IDS['status']}").strip(),
        answer=page.input_value(f"#{IDS['answer']} textarea"),
        overlay_size=size("overlay"),
        similarity_size=size("similarity"),
        mask_links=list(dict.fromkeys(links)),
    )
