"""What `imagine` makes of odd arguments: huge numbers and long values get one short sentence, exit 2.

The first tests run the command as a user does, in a subprocess, so a traceback or a wrong exit code
shows; the rest call ``imagine.main`` in-process to keep the file quick.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import imagine
from gateway import InvalidRequest, parse_user

ROOT = Path(__file__).resolve().parents[1]
HUGE = "9" * 5000  # past Python's 4,300-digit int() limit


def imagine_command(env: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imagine", *argv],
        cwd=env,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = imagine.main(list(argv))
    out, err = capsys.readouterr()
    assert out == "" or code == 0
    return code, err


def test_a_5000_digit_seed_exits_2_with_the_range_sentence(env: Path) -> None:
    proc = imagine_command(env, "generate", f"a red fox --seed {HUGE}", "-o", "fox.png")
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == (
        "imagine: --seed must be a whole number from 0 to 4294967295; "
        "got a number with more than 20 digits.\n"
    )
    assert not (env / "fox.png").exists()


def test_a_5000_digit_grant_exits_2_with_the_range_sentence(env: Path) -> None:
    proc = imagine_command(env, "quota", "grant", "cli:bob", HUGE)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == (
        "imagine: Grant a whole number of credits from 1 to 1000000 (negative takes back); "
        "got a number with more than 20 digits.\n"
    )


@pytest.mark.parametrize(
    ("argv", "sentence"),
    [
        (("generate", f"a fox --steps {HUGE}"), "--steps must be a whole number from 1 to 50; got a number"),
        (("generate", f"a fox --n {HUGE}"), "--n must be a whole number from 1 to 4; got a number"),
        (("generate", f"a fox --guidance {HUGE}"), "--guidance must be a number from 1 to 20; got a number"),
        (("quota", "grant", "cli:bob", "-" + HUGE), "Grant a whole number of credits from 1 to 1000000"),
        (("quota", "set", "cli:bob", HUGE), "The daily allowance must be from 0 to 1000000; got a number"),
        (("quota", "grant", "cli:bob", "1" * 21), "Grant a whole number of credits from 1 to 1000000"),
    ],
)
def test_numbers_past_20_digits_get_the_range_sentence(
    env: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], sentence: str
) -> None:
    code, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith(f"imagine: {sentence}") and err.endswith("more than 20 digits.\n"), err


LONG = "z" * 5000


@pytest.mark.parametrize(
    "argv",
    [
        ("generate", f"a fox --{LONG}"),
        ("generate", f"a fox --ar {LONG}"),
        ("generate", f"a fox --seed 1 {LONG}"),
        ("quota", "grant", "cli:bob", LONG),
        ("quota", "set", "cli:bob", LONG),
        ("quota", "show", LONG),
        ("quota", "grant", "9" * 5000, "5"),
        ("ban", f"cli:{LONG}", "spam"),
        ("ban", "cli:bob", LONG),
        ("unban", f"{LONG}:1"),
    ],
)
def test_error_sentences_quote_at_most_40_characters(
    env: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    code, err = run(capsys, *argv)
    assert code == 2
    assert len(err) < 300, err
    assert "z" * 41 not in err and "9" * 41 not in err, err


def test_a_whole_number_argument_is_digits_only(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "quota", "grant", "cli:bob", "1_000") == (
        2,
        "imagine: N must be a whole number; got '1_000'.\n",
    )
    assert imagine.main(["quota", "grant", "cli:bob", " +7 "]) == 0
    assert "Granted 7 credits to cli:bob" in capsys.readouterr().out


@pytest.mark.parametrize("platform", ["discord", "telegram", "cli"])
def test_admin_commands_refuse_user_ids_past_64_characters(platform: str) -> None:
    """Every admin reply names the user: a bounded id keeps it within Discord's and Telegram's limits."""
    assert parse_user("1" * 20, platform) == f"{platform}:" + "1" * 20
    assert parse_user("web:2001:db8:85a3::8a2e:370:7334", platform) == "web:2001:db8:85a3::8a2e:370:7334"
    for text in ("9" * 65, "9" * 5000, "telegram:" + "9" * 56):
        with pytest.raises(InvalidRequest) as caught:
            parse_user(text, platform)
        assert str(caught.value) == f"A user id is at most 64 characters long; got '{text[:40]}…'."
