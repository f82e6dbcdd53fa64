"""The light side stays light: gateway, storage and the bots never load torch or diffusers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers")


@pytest.mark.parametrize(
    "modules",
    [
        ["gateway", "storage"],
        ["gateway.service", "gateway.http_backend", "gateway.replicate_backend", "gateway.web.app"],
        ["bots.discord_bot"],
        ["bots.telegram_bot"],
        ["imagine"],
    ],
)
def test_imports_load_no_torch(modules: list[str]) -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError as exc:\n"
        "        if exc.name != name: raise\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == ""


def test_storage_imports_nothing_of_the_project() -> None:
    for path in (ROOT / "storage").rglob("*.py"):
        text = path.read_text()
        for other in ("gateway", "bots", "backend", "imagine"):
            assert f"import {other}" not in text and f"from {other}" not in text, path


def test_gateway_never_imports_a_front_or_the_cli() -> None:
    for path in (ROOT / "gateway").rglob("*.py"):
        text = path.read_text()
        for banned in (
            "import discord",
            "import telegram",
            "from bots",
            "import bots",
            "import imagine",
            "import torch",
        ):
            assert banned not in text, f"{path}: {banned}"
