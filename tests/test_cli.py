"""The `imagine` command: generate through the whole core, quotas, bans, stats, bad input."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import imagine

ROOT = Path(__file__).resolve().parents[1]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = imagine.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_writes_the_png_and_reports_seed_time_and_credits(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "generate", "a red fox --seed 7 --size 320x256", "-o", "fox.png")
    assert code == 0, err
    assert Image.open(env / "fox.png").size == (320, 256)
    assert "seed 7" in out and "24 credits left" in out and " s · " in out


def test_the_26th_image_of_the_day_is_refused_and_not_charged(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(25):
        code, out, err = run(capsys, "generate", f"fox {i}", "-o", f"f{i}.png")
        assert code == 0, err
    code, out, err = run(capsys, "generate", "one more", "-o", "extra.png")
    assert code == imagine.EXIT_REFUSED
    assert err.startswith(
        "imagine: You have used all 25 credits of today's allowance; they reset at 00:00 UTC"
    )
    assert not (env / "extra.png").exists()
    user = f"cli:{getpass.getuser()}"
    code, out, _ = run(capsys, "quota", "show", user)
    assert "Used today: 25 of 25" in out and "Reserved by images in progress: 0" in out
    code, out, _ = run(capsys, "quota", "grant", user, "5")
    assert out.strip() == f"Granted 5 credits to {user}; bonus now 5."
    code, out, err = run(capsys, "generate", "one more", "-o", "extra.png")
    assert code == 0 and "4 credits left" in out, err


def test_admin_commands_share_the_database(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        run(capsys, "quota", "set", "discord:5", "3")[1].strip() == "discord:5 may now make 3 images a day."
    )
    assert "Used today: 0 of 3 (set by an admin)" in run(capsys, "quota", "show", "discord:5")[1]
    assert run(capsys, "quota", "set", "discord:5", "default")[1].strip() == (
        "discord:5 is back on the default allowance of 25 a day."
    )
    user = f"cli:{getpass.getuser()}"
    assert run(capsys, "ban", user, "too", "many", "foxes")[1].strip() == f"{user} is banned: too many foxes"
    code, _, err = run(capsys, "generate", "a fox")
    assert (
        code == imagine.EXIT_REFUSED and err.strip() == "imagine: You are banned from Imagine: too many foxes"
    )
    assert run(capsys, "unban", user)[1].strip() == f"{user} is no longer banned."
    assert run(capsys, "generate", "a fox", "-o", "a.png")[0] == 0
    code, out, _ = run(capsys, "stats")
    assert code == 0 and "Jobs: 1 (succeeded 1)" in out and "Today: " in out
    code, out, _ = run(capsys, "stats", "--json")
    figures = json.loads(out)
    assert figures["images"] == 1 and figures["today"]["images"] == 1 and figures["month"]["jobs"] == 1
    assert {"gpu_cost_per_second", "gpu_seconds_per_image", "top_users", "refunds", "hourly"} <= set(figures)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "a fox --steps 0"], "imagine: --steps must be a whole number from 1 to 50; got 0."),
        (
            ["quota", "grant", "bob", "5"],
            "imagine: Name the user by id or as platform:id, e.g. cli:123; got 'bob'.",
        ),
        (["quota", "grant", "cli:bob", "five"], "imagine: N must be a whole number; got 'five'."),
        (
            ["quota", "set", "cli:bob", "-2"],
            "imagine: The daily allowance must be from 0 to 1000000; got -2.",
        ),
    ],
)
def test_bad_arguments_get_one_sentence_and_exit_2(
    env: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = run(capsys, *argv)
    assert code == imagine.EXIT_INVALID and err.strip() == message


def test_image_actions_write_pngs_of_the_right_size_one_credit_each(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Image.new("RGB", (600, 400), (200, 40, 40)).save(env / "in.jpg", quality=90)
    code, out, err = run(capsys, "generate", "a red fox --strength 0.5", "--image", "in.jpg", "-o", "i.png")
    assert code == 0, err
    assert Image.open(env / "i.png").size == (1024, 704), "the picture's ratio, fitted to 1024"
    code, out, err = run(capsys, "upscale", "i.png", "a red fox --seed 5", "-o", "up.png")
    assert code == 0, err
    assert Image.open(env / "up.png").size == (2048, 1408) and "seed 5" in out
    code, out, err = run(capsys, "upscale", "in.jpg", "-o", "up2.png")
    assert code == 0, err
    assert Image.open(env / "up2.png").size == (1216, 768)
    code, out, err = run(capsys, "vary", "in.jpg", "a red fox", "--strong", "-o", "v.png")
    assert code == 0 and "21 credits left" in out, err
    assert Image.open(env / "v.png").size == (576, 384)
    with pytest.raises(SystemExit):
        imagine.main(["upscale", "--help"])
    assert "a detailed, sharp, high quality image" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["upscale", "note.png"], "imagine: The picture must be a PNG, JPEG or WebP image."),
        (["vary", "cut.png", "a fox"], "imagine: The picture is damaged or cut off; send it again."),
        (
            ["generate", "a fox", "--image", "missing.png"],
            "imagine: Cannot read the picture 'missing.png': No such file or directory.",
        ),
        (
            ["generate", "a fox --strength 0.5"],
            "imagine: --strength sets how far an image prompt moves from its picture; "
            "attach a picture to use it.",
        ),
    ],
)
def test_bad_pictures_exit_2_with_one_sentence_and_cost_nothing(
    env: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    (env / "note.png").write_text("not a picture")
    Image.new("RGB", (300, 300), "blue").save(env / "whole.png")
    (env / "cut.png").write_bytes((env / "whole.png").read_bytes()[:200])
    code, _, err = run(capsys, *argv)
    assert code == imagine.EXIT_INVALID and err.strip() == message
    assert "Used today: 0 of 25" in run(capsys, "quota", "show", f"cli:{getpass.getuser()}")[1]


def test_upscale_in_a_subprocess_doubles_the_picture(tmp_path: Path) -> None:
    """The installed command's path: argument parsing, the fake backend, the PNG on disk."""
    Image.new("RGB", (320, 256), (10, 120, 200)).save(tmp_path / "in.png")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGINE_", "DISCORD_", "TELEGRAM_"))}
    env.update(IMAGINE_BACKEND="fake", IMAGINE_DB=str(tmp_path / "db.sqlite3"), PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "imagine", "upscale", "in.png", "-o", "out.png"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert Image.open(tmp_path / "out.png").size == (640, 512)
    assert "640x512" in proc.stdout and "24 credits left" in proc.stdout


def test_bad_settings_name_the_variable(
    env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGINE_DAILY_QUOTA", "lots")
    code, _, err = run(capsys, "stats")
    assert code == imagine.EXIT_INVALID
    assert err.strip() == "imagine: IMAGINE_DAILY_QUOTA must be a whole number; got 'lots'."
    monkeypatch.setenv("IMAGINE_DAILY_QUOTA", "3")
    monkeypatch.setenv("IMAGINE_BACKEND", "quantum")
    code, _, err = run(capsys, "generate", "a fox")
    assert "IMAGINE_BACKEND='quantum' is not a backend; choose one of" in err


def test_failed_generation_exits_4_with_the_refund(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.backend import register_backend

    register_backend("broken", "tests.test_cli:BrokenBackend")
    os.environ["IMAGINE_BACKEND"] = "broken"
    code, _, err = run(capsys, "generate", "a fox")
    assert code == imagine.EXIT_FAILED
    assert err.strip() == "imagine: The image generator failed: out of memory; your 1 credit was refunded."


class BrokenBackend:
    """Registered through the real registry, like any backend plugin."""

    name = "broken"
    capacity = 1

    def __init__(self, settings: object) -> None:
        pass

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def check_available(self) -> None:
        pass

    async def generate(self, job_id: str, request: object, progress: object) -> object:
        from gateway.errors import BackendError

        raise BackendError("out of memory")


@pytest.mark.slow
def test_generate_with_the_tiny_model_end_to_end(tmp_path: Path) -> None:
    """The issue's first line: the real local backend, the tiny model, a 320x256 PNG."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGINE_", "DISCORD_", "TELEGRAM_"))}
    env.update(
        IMAGINE_MODEL="tiny",
        IMAGINE_DB=str(tmp_path / "db.sqlite3"),
        IMAGINE_CACHE_DIR=str(tmp_path / "models"),
        PYTHONPATH=str(ROOT),
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "imagine",
            "generate",
            "a red fox --seed 7 --size 320x256 --steps 4",
            "-o",
            "fox.png",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert Image.open(tmp_path / "fox.png").size == (320, 256)
    assert "seed 7" in proc.stdout and "24 credits left" in proc.stdout


def test_secrets_are_scrubbed_from_every_log_line(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """httpx logs Telegram's token-bearing URLs; whatever logs a secret, the handler hides it."""
    import logging

    from gateway.settings import Settings

    settings = Settings.from_env(
        {"TELEGRAM_TOKEN": "123456:SECRET-token", "IMAGINE_BACKEND_API_KEY": "k3y-s3cret"}, env_file=None
    )
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    imagine.setup_logging(settings)
    try:
        logging.getLogger("httpx").warning(
            'HTTP Request: POST https://api.telegram.org/bot%s/getMe "200 OK"', "123456:SECRET-token"
        )
        logging.getLogger("imagine").error("worker refused key k3y-s3cret")
        err = capsys.readouterr().err
        assert "SECRET-token" not in err and "k3y-s3cret" not in err
        assert err.count("**********") == 2
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def test_generate_in_the_relax_lane_once_credits_are_spent(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IMAGINE_DAILY_QUOTA", "0")
    monkeypatch.setenv("IMAGINE_RELAX_DAILY", "1")
    assert imagine.main(["generate", "a fox --steps 2", "-o", "paid.png"]) == 3  # no credits
    assert "Or add --relax for a free image" in capsys.readouterr().err
    assert imagine.main(["generate", "a fox --steps 2 --relax", "-o", "free.png"]) == 0
    assert (env / "free.png").exists() and "· relax, no credits" in capsys.readouterr().out
    assert (
        imagine.main(["generate", "a fox --steps 2 --relax", "-o", "again.png"]) == 3
    )  # today's one is used
