"""The status page every coordinator node serves at ``GET /``: one self-contained HTML file (``static/status.html``).

Rules:
1. The page holds no data: it is the same bytes for everyone, so ``GET /`` needs no token. Its script reads
   ``v1/cluster``, ``v1/jobs`` and ``v1/leases`` of the node that served it (same origin, relative URLs) every 2 s,
   with the reader token a person pastes into it (kept in ``sessionStorage``, sent as ``Authorization: Bearer``).
2. Everything the API returns is untrusted text (series symbols and QMTL keys are free printable text): the script
   builds the DOM with ``createElement``/``textContent`` only, never ``innerHTML``.
3. Defence in depth: the answer carries a Content-Security-Policy that allows only the page's own inline script
   and style (pinned by their SHA-256) and same-origin fetches: no external assets, frames, plug-ins or form posts.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources

from aiohttp import web

from coordinator._call import Call

__all__ = ["StatusPage", "content_security_policy"]

_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


def _source_hashes(html: str, tag: str) -> list[str]:
    return [
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for name, body in _INLINE.findall(html)
        if name == tag
    ]


def content_security_policy(html: str) -> str:
    """The CSP of ``html``: its inline ``<script>`` and ``<style>`` blocks by hash, fetches to the same origin."""
    scripts = " ".join(_source_hashes(html, "script")) or "'none'"
    styles = " ".join(_source_hashes(html, "style")) or "'none'"
    return (
        f"default-src 'none'; script-src {scripts}; style-src {styles}; connect-src 'self'; img-src data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


class StatusPage:
    """The page's bytes and headers, computed once per process."""

    def __init__(self, html: str) -> None:
        self.body = html.encode("utf-8")
        self.headers = {
            "Content-Security-Policy": content_security_policy(html),
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache",
        }

    @classmethod
    def load(cls) -> StatusPage:
        """Read ``coordinator/static/status.html`` from the installed package."""
        page = resources.files("coordinator") / "static" / "status.html"
        return cls(page.read_text(encoding="utf-8"))

    async def serve(self, call: Call) -> web.Response:
        """``GET /``: the page itself (public; the data comes from the JSON routes, with the reader's token)."""
        return web.Response(body=self.body, content_type="text/html", charset="utf-8", headers=self.headers)
