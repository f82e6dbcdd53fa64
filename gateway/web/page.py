"""The page at ``/``: one self-contained HTML file, served with a strict CSP, an ETag and gzip."""

from __future__ import annotations

import gzip
import hashlib
import re
from base64 import b64encode
from dataclasses import dataclass
from pathlib import Path

PAGE = Path(__file__).with_name("static") / "index.html"


@dataclass(frozen=True)
class Page:
    html: bytes
    gzipped: bytes
    etag: str
    headers: dict[str, str]

    @classmethod
    def load(cls, path: Path = PAGE) -> Page:
        html = path.read_bytes()
        text = html.decode("utf-8")
        scripts = re.findall(r"<script>(.*?)</script>", text, re.DOTALL)
        styles = re.findall(r"<style>(.*?)</style>", text, re.DOTALL)

        def sources(blocks: list[str]) -> str:
            hashes = (b64encode(hashlib.sha256(b.encode()).digest()).decode() for b in blocks)
            return " ".join(f"'sha256-{h}'" for h in hashes) or "'none'"

        csp = (
            f"default-src 'none'; script-src {sources(scripts)}; style-src {sources(styles)}; "
            "img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'"
        )
        etag = '"' + hashlib.sha256(html).hexdigest()[:20] + '"'
        headers = {
            "Content-Security-Policy": csp,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache",
            "ETag": etag,
            "Vary": "Accept-Encoding",
        }
        return cls(html, gzip.compress(html, 9, mtime=0), etag, headers)
