"""Drive Debian's headless Chromium from tests: ``dump_dom`` (the CLI's ``--dump-dom``) and a minimal W3C WebDriver
client of ``chromedriver`` (package chromium-driver) for pages a person types into.

Both are installed by ``bash scripts/install_test_deps.sh``; a test fails (not skips) when they are missing.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

#: The flags every Chromium of the tests runs with: headless, no sandbox (root in CI), no network of its own.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
]
_ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


def require(binary: str) -> str:
    """The path of ``binary``, or fail the test naming the install script."""
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} is missing: run `bash scripts/install_test_deps.sh` (apt chromium chromium-driver)")
    return path


def dump_dom(url: str, user_data_dir: Path, budget_ms: int = 5000) -> str:
    """The DOM after the page's scripts ran for ``budget_ms`` of virtual time, as Chromium serializes it."""
    done = subprocess.run(
        [
            require("chromium"),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={user_data_dir}",
            "--dump-dom",
            f"--virtual-time-budget={budget_ms}",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class WebDriverError(AssertionError):
    """chromedriver answered with an error."""


@dataclass
class Browser:
    """One WebDriver session of a Chromium started by chromedriver."""

    base: str
    session: str

    @classmethod
    def start(cls, driver_url: str, user_data_dir: Path) -> Browser:
        caps = {
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": require("chromium"),
                        "args": [*CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}"],
                    },
                }
            }
        }
        answer = _request("POST", driver_url + "/session", caps)
        return cls(driver_url, answer["sessionId"])

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        return _request(method, f"{self.base}/session/{self.session}{path}", body)

    def get(self, url: str) -> None:
        self._call("POST", "/url", {"url": url})

    def title(self) -> str:
        return str(self._call("GET", "/title"))

    def find_all(self, css: str) -> list[str]:
        return [item[_ELEMENT] for item in self._call("POST", "/elements", {"using": "css selector", "value": css})]

    def find(self, css: str) -> str | None:
        found = self.find_all(css)
        return found[0] if found else None

    def script(self, body: str, *args: Any) -> Any:
        """Run ``body`` (a function body; ``arguments`` holds ``args``) in the page and return its result.

        Reading through one script is atomic: the status page rebuilds its tables every 2 s, so an element found by
        one WebDriver call may be gone ("stale") by the next.
        """
        return self._call("POST", "/execute/sync", {"script": body, "args": list(args)})

    def text_of(self, css: str) -> str:
        """The rendered text (``innerText``: what a person reads) of the first match of ``css``, or ""."""
        return str(self.script("const e = document.querySelector(arguments[0]); return e ? e.innerText : '';", css))

    def attribute_of(self, css: str, name: str) -> str | None:
        found = self.script(
            "const e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : null;", css, name
        )
        return None if found is None else str(found)

    def count(self, css: str) -> int:
        return int(self.script("return document.querySelectorAll(arguments[0]).length;", css))

    def type(self, element: str, text: str) -> None:
        self._call("POST", f"/element/{element}/value", {"text": text})

    def click(self, element: str) -> None:
        self._call("POST", f"/element/{element}/click", {})

    def screenshot(self) -> bytes:
        return base64.b64decode(self._call("GET", "/screenshot"))

    def close(self) -> None:
        self._call("DELETE", "")


def _request(method: str, url: str, body: Any = None, timeout_s: float = 60.0) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json; charset=utf-8"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            return json.loads(answer.read())["value"]
    except urllib.error.HTTPError as exc:
        raise WebDriverError(f"{method} {url}: {exc.code} {exc.read()[:500]!r}") from None


def start_driver(port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """Start chromedriver on loopback ``port`` and wait (with a deadline) until it is ready."""
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [require("chromedriver"), f"--port={port}", "--allowed-ips=127.0.0.1"], stdout=log, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if _request("GET", f"http://127.0.0.1:{port}/status", timeout_s=2.0).get("ready"):
                return proc
        except (OSError, urllib.error.URLError, ValueError):
            pass
        assert proc.poll() is None, log_path.read_text(errors="replace")[-2000:]
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"chromedriver did not become ready: {log_path.read_text(errors='replace')[-2000:]}")
