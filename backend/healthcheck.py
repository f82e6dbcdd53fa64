"""The container's health check: exit 0 when the worker on this host says READY or BUSY, else 1.

``python -m backend.healthcheck`` (the Dockerfile's HEALTHCHECK) asks ``/health-check`` on
``127.0.0.1:$PORT`` (default 8001). Standard library only: no curl in the image, no torch
import, an answer within a few seconds.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request

HEALTHY = ("READY", "BUSY")


def check(url: str, timeout: float = 3.0) -> tuple[bool, str]:
    """Whether the worker at ``url`` is serving, and a line saying what it reported."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health-check", timeout=timeout) as response:
            data = json.loads(response.read(64 * 1024))
    except (OSError, ValueError) as exc:
        return False, f"no answer from {url}: {type(exc).__name__}"
    status = data.get("status") if isinstance(data, dict) else None
    line = f"worker is {status}"
    if status == "SETUP_FAILED":
        line += f": {data.get('setup', {}).get('error')}"
    elif status == "STARTING":
        line += f" ({data.get('setup', {}).get('phase')})"
    return status in HEALTHY, line


def main() -> int:
    port = os.environ.get("PORT", "").strip() or "8001"
    healthy, line = check(f"http://127.0.0.1:{port}")
    print(line)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
