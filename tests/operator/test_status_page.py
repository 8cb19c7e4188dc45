"""The status page at ``GET /``: public and locked down, and in a real headless Chromium it shows a person the
leader, the jobs' progress and the leases of a live 3-node cluster, with hostile strings shown as text."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from devkit.polling import http_json, wait_for
from devkit.ports import free_port

from .browser_kit import Browser, dump_dom, start_driver
from .operator_kit import READER_TOKEN, WORKER_TOKEN, Ops

#: A symbol a series may legally carry (1-64 printable chars) that is also markup with a script in it.
HOSTILE_SYMBOL = "<img src=x onerror=\"document.title='pwned'\">&amp;"
HOSTILE_WORKER = "<b>w1</b>"
HOSTILE_KEY = "page:60:0:60000:<script>document.title='pwned'</script>"


class _Elements(HTMLParser):
    """The start tags of a serialized DOM and the text of the elements with an id."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text_by_id: dict[str, str] = {}
        self._open: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in ("meta", "link", "input", "br", "img"):
            self._open.append(dict(attrs).get("id"))

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for element_id in self._open:
            if element_id:
                self.text_by_id[element_id] = self.text_by_id.get(element_id, "") + data


def parse_dom(html: str) -> _Elements:
    parser = _Elements()
    parser.feed(html)
    return parser


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    """A Chromium driven through chromedriver on a free loopback port; both stop at teardown."""
    port = free_port("127.0.0.1")
    driver = start_driver(port, tmp_path / "chromedriver.log")
    session = None
    try:
        session = Browser.start(f"http://127.0.0.1:{port}", tmp_path / "profile")
        yield session
    finally:
        if session is not None:
            session.close()
        driver.terminate()
        driver.wait(timeout=20)


@pytest.mark.cluster
def test_the_page_is_public_self_contained_and_locked_down(ops: Ops) -> None:
    """Every node serves the same data-free page without a token, with a CSP that pins its inline code."""
    bodies = set()
    for url in ops.cluster.urls:
        with urllib.request.urlopen(url + "/", timeout=10) as answer:
            assert answer.status == 200
            assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
            csp = answer.headers["Content-Security-Policy"]
            bodies.add(answer.read().decode())
    page = bodies.pop()
    assert not bodies, "every node serves the same page"
    assert re.search(r"script-src 'sha256-[A-Za-z0-9+/]+=*';", csp) and "connect-src 'self'" in csp
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    links = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", page)
    assert links == ["data:,"], "no external assets: the only link is the empty inline icon"
    assert not re.search(r"\.(?:inner|outer)HTML\s*[+]?=|insertAdjacentHTML|document\.write|eval\(", page)
    assert http_json("GET", ops.cluster.urls[0] + "/v1/jobs")[0] == 401, "the data itself still needs a token"


@pytest.mark.cluster
def test_without_a_token_the_page_explains_the_401(ops: Ops, tmp_path: Path) -> None:
    """Loaded without a token, the rendered page shows the 401 message, the token field and no data."""
    ops.submit("NOTOKEN/USD", 1)
    dom = parse_dom(dump_dom(ops.cluster.urls[1] + "/", tmp_path / "profile"))
    banner = dom.text_by_id.get("banner", "")
    assert "401 unauthorized" in banner and "requires a token" in banner
    assert (
        "input",
        {
            "id": "token",
            "name": "token",
            "type": "password",
            "placeholder": "paste a reader token",
            "spellcheck": "false",
        },
    ) in dom.tags
    assert not any(attrs.get("data-job-id") for _, attrs in dom.tags), "no job is shown without a token"
    assert dom.text_by_id.get("leader", "") == ""


@pytest.mark.cluster
def test_a_person_sees_the_leader_jobs_progress_and_leases(ops: Ops, browser: Browser, tmp_path: Path) -> None:
    """After pasting a reader token the page shows the leader, a 25% progress bar, the active and stale leases,
    hostile strings as plain text, and keeps refreshing itself."""
    job = ops.submit(HOSTILE_SYMBOL, 4)
    done = ops.claim("w-page")[0]
    status, _ = ops.api(
        "POST",
        "/v1/windows/complete",
        {"lease_id": done["lease_id"], "token": done["token"], "rows": 15},
        token=WORKER_TOKEN,
    )
    assert status == 200
    active = ops.claim(HOSTILE_WORKER)[0]
    status, stale = ops.api("POST", "/v1/leases/claim", {"key": HOSTILE_KEY, "lease_ms": 1}, token=WORKER_TOKEN)
    assert status == 200

    def shows_the_leader() -> bool:
        # Compared with node 0's view at each poll, so an election during the test cannot make it flaky.
        leader_id = (ops.cluster.view(0) or {}).get("leader_id")
        return bool(leader_id) and browser.text_of("#leader-id") == leader_id

    browser.get(ops.cluster.urls[0] + "/")
    wait_for(lambda: "401" in browser.text_of("#banner"), 20, "the 401 message")
    browser.type(browser.find("#token") or "", READER_TOKEN)
    browser.click(browser.find("#token-save") or "")
    wait_for(shows_the_leader, 20, "the leader's node id on the page")
    assert browser.text_of("#banner") == "", "no error is shown"

    row = f'#jobs tr[data-job-id="{job["job_id"]}"]'
    row_text = browser.text_of(row)
    assert HOSTILE_SYMBOL in row_text and "25.0%" in row_text and "1 / 4" in row_text
    assert browser.attribute_of(f'{row} [role="progressbar"]', "aria-valuenow") == "25.0"
    fill_w, bar_w = browser.script(
        "const row = document.querySelector(arguments[0]);"
        "return [row.querySelector('.fill'), row.querySelector('.bar')].map((e) => e.getBoundingClientRect().width);",
        row,
    )
    assert abs(fill_w / bar_w - 0.25) < 0.02, "the bar is filled a quarter"

    lease_text = browser.text_of(f'#active-leases tr[data-lease-id="{active["lease_id"]}"]')
    assert HOSTILE_SYMBOL in lease_text and HOSTILE_WORKER in lease_text
    assert HOSTILE_KEY in browser.text_of(f'#stale-leases tr[data-lease-id="{stale["lease"]["lease_id"]}"]')
    assert browser.count(f'#stale-leases tr[data-lease-id="{active["lease_id"]}"]') == 0
    assert browser.count("img") == browser.count("main b") == browser.count("main script") == 0, "text, not markup"
    assert browser.title() == "Seamless coordinator"

    shot = browser.screenshot()
    (tmp_path / "status_page.png").write_bytes(shot)
    assert shot.startswith(b"\x89PNG") and len(shot) > 20_000

    status, _ = ops.api(
        "POST",
        "/v1/windows/complete",
        {"lease_id": active["lease_id"], "token": active["token"], "rows": 15},
        token=WORKER_TOKEN,
    )
    assert status == 200
    wait_for(
        lambda: "50.0%" in browser.text_of(f'#jobs tr[data-job-id="{job["job_id"]}"]'),
        20,
        "the page to refresh itself to 50%",
    )

    browser.get(ops.cluster.urls[0] + "/")
    wait_for(shows_the_leader, 20, "a reload to reuse the token of this tab")
    browser.click(browser.find("#token-forget") or "")
    wait_for(lambda: "401" in browser.text_of("#banner"), 20, "the 401 message after Forget")
    assert browser.count("#jobs tbody tr") == 0, "the data is cleared once the token is gone"
