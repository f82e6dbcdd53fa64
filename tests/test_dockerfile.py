"""The Dockerfile, without Docker: its shape, and every project command it runs, run here.

No Docker engine runs on the test machines, so the commands the image runs are taken from the
Dockerfile itself and run outside it: `imagine download-model` (with the tiny model), the CMD
(the worker, on the tiny model), the HEALTHCHECK (against that worker, before and after READY).
A command that breaks fails here rather than in a deploy.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
#: RUN commands that set up the operating system or Python itself; anything else must be run below.
SETUP = re.compile(
    r"^(apt-get |rm -rf /var/lib/apt/lists|useradd |python3 -m venv |pip install |mkdir |chown )"
)


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    out = []
    for line in lines:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), " ".join(rest.split())))
    return out


def run_commands() -> list[str]:
    return [c.strip() for kind, args in instructions() if kind == "RUN" for c in args.split("&&")]


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form CMD or HEALTHCHECK CMD."""
    array = args[args.index("[") :]
    value = json.loads(array)
    assert isinstance(value, list)
    return [str(v) for v in value]


def test_the_image_is_a_cuda_runtime_with_the_backend_extra_offline_and_unprivileged() -> None:
    steps = instructions()
    kinds = [k for k, _ in steps]
    cuda = next(args for k, args in steps if k == "ARG" and args.startswith("CUDA_IMAGE="))
    assert re.match(r"CUDA_IMAGE=nvidia/cuda:[\d.]+-(cudnn-)?runtime-ubuntu", cuda)
    assert any(k == "FROM" and "${CUDA_IMAGE}" in a for k, a in steps)
    assert 'pip install "/app[backend]"' in run_commands()
    download = next(i for i, (k, a) in enumerate(steps) if k == "RUN" and "imagine download-model" in a)
    offline = next(i for i, (k, a) in enumerate(steps) if k == "ENV" and "HF_HUB_OFFLINE=1" in a)
    assert download < offline, "weights are fetched at build time, then the image is offline"
    user = next(i for i, (k, a) in enumerate(steps) if k == "USER")
    assert steps[user][1] not in ("root", "0")
    assert user > max(i for i, k in enumerate(kinds) if k == "RUN"), "nothing runs as root after USER"
    assert kinds.count("CMD") == 1 and kinds.count("HEALTHCHECK") == 1


def test_every_run_command_is_setup_or_a_tested_project_command() -> None:
    project = [c for c in run_commands() if not SETUP.match(c)]
    assert project == ['imagine download-model "${IMAGINE_MODEL}"']


def test_the_dockerignore_keeps_secrets_and_local_data_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".env", ".git", ".venv", "data", "*.sqlite3"):
        assert entry in ignored


def test_the_procfile_has_every_process_type_and_each_is_a_real_command() -> None:
    import shlex

    import imagine

    procfile = dict(
        line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip()
    )
    assert set(procfile) == {"web", "discord", "telegram", "worker"}
    for kind, command in procfile.items():
        words = shlex.split(command.replace("${PORT:-8000}", "5000").replace("${PORT:-8001}", "5000"))
        while "=" in words[0]:  # VAR=value prefixes
            words.pop(0)
        assert words[0] == "imagine", command
        args = imagine.build_parser().parse_args(words[1:])
        assert args.command == kind
    # Hosted platforms give the port in $PORT and reach the process from outside the container.
    assert "IMAGINE_WEB_HOST=0.0.0.0" in procfile["web"] and "${PORT" in procfile["web"]
    assert "--host 0.0.0.0" in procfile["worker"] and "${PORT" in procfile["worker"]


# --- the project commands, run here ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def image_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The image's environment, pointed at temp folders and the venv's `imagine` and `python`."""
    root = tmp_path_factory.mktemp("image")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGINE_", "HF_", "REPLICATE_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        HF_HOME=str(root / "huggingface"),
        IMAGINE_CACHE_DIR=str(root / "models"),
        IMAGINE_MODEL="tiny",
        IMAGINE_DB=str(root / "data" / "imagine.sqlite3"),
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture(scope="module")
def downloaded(image_env: dict[str, str]) -> dict[str, str]:
    """Step 4 of the Dockerfile, as written, with IMAGINE_MODEL=tiny."""
    (command,) = [c for c in run_commands() if c.startswith("imagine download-model")]
    done = subprocess.run(
        ["sh", "-c", command], env=image_env, capture_output=True, text=True, timeout=240, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert "tiny is ready at" in done.stdout
    assert list(Path(image_env["IMAGINE_CACHE_DIR"]).glob("tiny-v*/model_index.json"))
    return {**image_env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture
def worker(downloaded: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    """The image's CMD, as written, on a free port."""
    (cmd,) = [exec_form(a) for k, a in instructions() if k == "CMD"]
    env = {**downloaded, "PORT": str(free_port()), "IMAGINE_BACKEND_API_KEY": "s3cret"}
    process = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        yield process, env
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)
        assert process.stdout is not None
        process.stdout.close()


def healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    (args,) = [a for k, a in instructions() if k == "HEALTHCHECK"]
    return subprocess.run(exec_form(args), env=env, cwd=ROOT, capture_output=True, text=True, timeout=30)


@pytest.mark.slow
def test_the_cmd_serves_and_the_healthcheck_follows_it(
    worker: tuple[subprocess.Popen[str], dict[str, str]],
) -> None:
    process, env = worker
    url = f"http://127.0.0.1:{env['PORT']}"
    first = healthcheck(env)
    assert first.returncode == 1, first.stdout  # not up yet, or STARTING
    deadline = time.monotonic() + 120
    while (check := healthcheck(env)).returncode != 0:
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        assert time.monotonic() < deadline, check.stdout
        time.sleep(0.5)
    assert check.stdout.strip() == "worker is READY"
    health = httpx.get(f"{url}/health-check").json()
    assert set(health["cold_start"]) >= {"imports", "weights", "to_device", "compile", "warmup"}

    # The user story: a prediction with the key, then `imagine generate` through the worker.
    response = httpx.post(
        f"{url}/predictions",
        json={
            "input": {"prompt": "a red fox", "width": 256, "height": 256, "seed": 7, "num_inference_steps": 2}
        },
        headers={"Authorization": "Bearer s3cret"},
        timeout=60,
    )
    assert response.status_code == 200 and response.json()["status"] == "succeeded"
    assert response.json()["output"][0].startswith("data:image/png;base64,")
    out = Path(env["IMAGINE_DB"]).parent / "fox.png"
    gateway_env = {**env, "IMAGINE_BACKEND": "http", "IMAGINE_BACKEND_URL": url}
    generated = subprocess.run(
        ["imagine", "generate", "a red fox --size 256x256 --steps 2 --seed 7", "-o", str(out)],
        env=gateway_env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert generated.returncode == 0, generated.stderr
    assert out.read_bytes().startswith(b"\x89PNG")

    # A graceful stop: in-flight work finishes, then the worker exits 0.
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0
    assert process.stdout is not None
    assert "Application shutdown complete" in process.stdout.read()
    gone = healthcheck(env)
    assert gone.returncode == 1 and "no answer" in gone.stdout


def test_the_healthcheck_reads_port(downloaded: dict[str, str]) -> None:
    done = healthcheck({**downloaded, "PORT": str(free_port())})
    assert done.returncode == 1
    assert shlex.split(done.stdout)[:3] == ["no", "answer", "from"]
