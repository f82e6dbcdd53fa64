"""The light side stays light: gateway, storage and the bots never load torch or diffusers.

Who may import whom is declared as import-linter contracts in ``pyproject.toml`` and checked by
``lint-imports`` (``make lint``). What is checked here is behaviour the contracts cannot see:
what importing a module really loads (a platform library could pull in torch), and that the
contracts catch the imports a substring check missed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


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


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}  # these packages, not an installed copy of them
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_contracts_hold_and_catch_what_a_substring_check_missed(tmp_path: Path) -> None:
    kept = lint_imports(ROOT)
    assert kept.returncode == 0, kept.stdout
    for name in ("pyproject.toml", "imagine.py", "bots", "backend", "gateway", "storage"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, tmp_path / name)
    broken = {
        "gateway/jobs.py": "from torch import nn",  # the form the old substring test let through
        "bots/discord_ext/account.py": "from telegram import Bot",
        "storage/db.py": "from gateway import request",
        "gateway/request.py": "import imagine",
    }
    for path, line in broken.items():
        with (tmp_path / path).open("a") as file:
            file.write(f"\n{line}\n")
    out = lint_imports(tmp_path)
    assert out.returncode == 1
    report = " ".join(out.stdout.split())
    assert "gateway.jobs -> torch" in report
    assert "bots.discord_ext.account -> telegram" in report
    assert "storage.db -> gateway" in report
    assert "gateway.request -> imagine" in report
