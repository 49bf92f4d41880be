"""Screenshots of optuna-dashboard for docs/dashboard.md, taken by headless Chromium.

Serves a study with `python -m search dashboard` and drives Chromium through its DevTools protocol on a pipe
(`--remote-debugging-pipe`: no package beyond the standard library), doing what a reader would do: the trial
page with its user attributes scrolled down to the per-benchmark scores (optuna-dashboard shows them in a box
150 px high), the history plot, the study's note and, once the study was promoted, the best promoted trial
and the promoted study's history plotted by `promoted_<benchmark>` (the y-axis select).

Usage: .venv/bin/python bench/dashboard_screenshots.py --study tiny --storage sqlite:////tmp/tiny.db
[--trial N] [--out docs/images]; docs/dashboard.md says how its study was made.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import optuna

from search.dashboard import free_port
from search.records import promoted_study_name

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = [
    "chromium",
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
]
# Seconds a page gets to draw its plots after its text appeared.
SETTLE_S = 1.5


class Chromium:
    """Headless Chromium with one page, driven through the DevTools protocol on fds 3 and 4."""

    def __init__(self, width: int, height: int) -> None:
        to_chrome, self._writer = os.pipe()
        self._reader, from_chrome = os.pipe()

        def as_fds_3_and_4() -> None:
            a, b = os.dup(to_chrome), os.dup(from_chrome)  # out of the way of 3 and 4 first
            os.dup2(a, 3)
            os.dup2(b, 4)

        self._proc = subprocess.Popen(
            [*CHROMIUM, f"--window-size={width},{height}", "about:blank"],
            preexec_fn=as_fds_3_and_4,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome)
        os.close(from_chrome)
        self._buffer, self._id, self._session = b"", 0, None
        page = next(t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self._session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)[
            "sessionId"
        ]
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._proc.kill()
        self._proc.wait()
        os.close(self._writer)
        os.close(self._reader)

    def call(self, method: str, **params: Any) -> dict:
        """Send one command (to the page once attached) and return its result."""
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if self._session is not None:
            message["sessionId"] = self._session
        os.write(self._writer, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._reader, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium closed the pipe during {method}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:  # events and other replies are not waited for
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def js(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    def open(self, url: str, text: str, timeout_s: float = 60) -> None:
        """Load `url` and wait until the page shows `text` and has drawn."""
        self.call("Page.navigate", url=url)
        deadline = time.time() + timeout_s
        while not self.js(f"!!document.body && document.body.innerText.includes({json.dumps(text)})"):
            if time.time() > deadline:
                raise TimeoutError(f"{url} did not show {text!r} within {timeout_s:.0f} s")
            time.sleep(0.3)
        time.sleep(SETTLE_S)

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        print(f"wrote {path}", flush=True)


def scroll_attributes_to(chrome: Chromium, prefix: str) -> None:
    """Scroll the trial's user-attribute box (150 px high) so that its first line starting with `prefix` is on top
    (as far as the box scrolls)."""
    found = chrome.js(
        f"""(() => {{
        const line = [...document.querySelectorAll('p, span')].find(e => e.textContent.startsWith({json.dumps(prefix)}));
        if (!line) return false;
        const box = line.parentElement.parentElement;
        box.scrollTop = line.offsetTop - box.firstElementChild.firstElementChild.offsetTop;
        return true;
    }})()"""
    )
    if not found:
        raise RuntimeError(f"no user attribute starting with {prefix!r} on the page")


def choose_y_axis(chrome: Chromium, label: str) -> None:
    """Pick `label` in the history plot's y-axis select."""
    chrome.js(
        "document.querySelector('[role=combobox]').dispatchEvent(new MouseEvent('mousedown', {bubbles: true}))"
    )
    time.sleep(0.5)
    picked = chrome.js(
        f"""(() => {{
        const option = [...document.querySelectorAll('li[role=option]')].find(e => e.textContent.includes({json.dumps(label)}));
        if (option) option.click();
        return !!option;
    }})()"""
    )
    if not picked:
        raise RuntimeError(f"the y-axis select offers no {label!r}")
    time.sleep(SETTLE_S)


def study_ids(base: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{base}/api/studies", timeout=10) as r:
        return {s["study_name"]: s["study_id"] for s in json.load(r)["study_summaries"]}


def serve(study: str, storage: str) -> tuple[subprocess.Popen, str]:
    """`python -m search dashboard` for the study on a free port, once it answers; the process and its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "search",
            "dashboard",
            "--study",
            study,
            "--storage",
            storage,
            "--port",
            str(port),
        ],
        cwd=ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            study_ids(base)
            return proc, base
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"python -m search dashboard did not come up on port {port}") from None
            time.sleep(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", required=True)
    parser.add_argument("--storage", required=True, help="the study's storage URL")
    parser.add_argument("--trial", type=int, help="the trial shown (default: the best)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args()
    study = optuna.load_study(study_name=args.study, storage=args.storage)
    trial = study.best_trial.number if args.trial is None else args.trial
    bench = study.user_attrs["benchmarks"][0]
    args.out.mkdir(parents=True, exist_ok=True)
    proc, base = serve(args.study, args.storage)
    try:
        ids = study_ids(base)
        page = f"{base}/dashboard/studies/{ids[args.study]}"
        with Chromium(1900, 1440) as chrome:
            chrome.open(f"{page}/trials?numbers={trial}", "custom_regularization.py")
            scroll_attributes_to(chrome, f"gap_{bench} ")
            chrome.screenshot(args.out / "dashboard-trial.png")
        with Chromium(1500, 650) as chrome:
            chrome.open(page, "History")
            chrome.screenshot(args.out / "dashboard-history.png")
        with Chromium(1500, 700) as chrome:
            chrome.open(f"{page}/note", "Objective")
            chrome.screenshot(args.out / "dashboard-study-note.png")
        name = promoted_study_name(args.study)
        if name in ids:
            best = optuna.load_study(study_name=name, storage=args.storage).best_trial.number
            page = f"{base}/dashboard/studies/{ids[name]}"
            with Chromium(1500, 1420) as chrome:
                chrome.open(f"{page}/trials?numbers={best}", "custom_regularization.py")
                chrome.screenshot(args.out / "dashboard-promoted-trial.png")
            with Chromium(1500, 650) as chrome:
                chrome.open(page, "History")
                choose_y_axis(chrome, f"promoted_{bench}")
                chrome.screenshot(args.out / "dashboard-promoted-history.png")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
