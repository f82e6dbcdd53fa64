"""docker-compose.yml and Dockerfile.gateway, without Docker: what they set is what the settings read,
and the two replicas they describe start side by side on one PostgreSQL and pass their health check.

No Docker engine runs on the test machines, so the compose file is read as YAML, its ``${VAR:-default}``
filled in as compose would with nothing set, and the replicas' environment handed to the real
`imagine run` on loopback (the database and ports swapped for the test's).
"""

from __future__ import annotations

import inspect
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

import imagine
from gateway.settings import _VARIABLES, Settings
from tests.helpers.imagine_process import Imagine
from tests.test_dockerfile import exec_form

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
GATEWAY_DOCKERFILE = ROOT / "Dockerfile.gateway"
REPLICAS = ("imagine-a", "imagine-b")
OURS = ("IMAGINE_", "DISCORD_", "TELEGRAM_")
_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*)|:?\?[^}]*)?\}")


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def service(name: str) -> dict[str, Any]:
    found = compose()["services"][name]
    assert isinstance(found, dict)
    return found


def with_defaults(value: object) -> str:
    """A value as compose fills it in when none of its variables is set: ``${X:-d}`` is ``d``."""
    return _INTERPOLATION.sub(lambda m: m.group(2) or "", str(value))


def environment(name: str) -> dict[str, str]:
    env = service(name).get("environment", {})
    assert isinstance(env, dict), f"{name}: environment as a mapping, so replicas can share it"
    return {key: with_defaults(value) for key, value in env.items()}


def gateway_image_env() -> dict[str, str]:
    """The ENV of Dockerfile.gateway: what every replica starts with."""
    text = GATEWAY_DOCKERFILE.read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(word.split("=", 1) for word in shlex.split(line[4:]))
    return env


def known_variables() -> set[str]:
    """Every variable the settings read: the table, and the few ``_parse`` reads by name."""
    by_name = set(re.findall(r'get\("([A-Z_]+)"\)', inspect.getsource(Settings._parse)))
    assert {"IMAGINE_DB", "IMAGINE_BACKEND"} <= by_name
    return {name for name, _, _ in _VARIABLES} | by_name


def replica_env(name: str) -> dict[str, str]:
    return {**gateway_image_env(), **environment(name)}


def test_the_file_is_the_compose_spec_with_the_recipes_services() -> None:
    spec = compose()
    assert "version" not in spec
    assert set(spec["services"]) == {"postgres", *REPLICAS, "worker", "worker-demo"}
    assert service("postgres")["image"] == "postgres:16"


def test_every_variable_set_for_imagine_is_one_the_settings_read() -> None:
    known = known_variables()
    for name, env in [("Dockerfile.gateway", gateway_image_env())] + [
        (s, environment(s)) for s in (*REPLICAS, "worker", "worker-demo")
    ]:
        unknown = sorted(k for k in env if k.startswith(OURS) and k not in known)
        assert not unknown, f"{name} sets {unknown}, which nothing reads"


def test_each_replica_environment_is_valid_settings() -> None:
    for name in REPLICAS:
        settings = Settings.from_env(replica_env(name), env_file=None)
        assert settings.store_name == "postgresql://postgres:5432/imagine"
        assert settings.web_host == "0.0.0.0"
        assert settings.backend == "http" and settings.backend_urls == ("http://worker:8001",)
        assert settings.backend_api_key
        assert settings.data_dir == Path("/data")


def test_the_replicas_share_one_database_on_the_postgres_service() -> None:
    urls = {service(name)["environment"]["IMAGINE_DB"] for name in REPLICAS}
    assert len(urls) == 1, "both replicas must use the same IMAGINE_DB"
    url = urlsplit(with_defaults(urls.pop()))
    db = service("postgres")["environment"]
    assert url.scheme == "postgresql" and url.hostname == "postgres" and url.port == 5432
    assert url.username == db["POSTGRES_USER"] and url.path == "/" + db["POSTGRES_DB"]
    assert url.password == with_defaults(db["POSTGRES_PASSWORD"])
    assert "${POSTGRES_PASSWORD" in service("imagine-a")["environment"]["IMAGINE_DB"]


def test_postgres_is_healthchecked_and_the_replicas_wait_for_it() -> None:
    postgres = service("postgres")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    volume = postgres["volumes"][0].split(":")[0]
    assert volume in compose()["volumes"], "a named volume, so the data outlives the container"
    assert "ports" not in postgres, "the store is not published by default"
    for name in REPLICAS:
        assert service(name)["depends_on"] == {"postgres": {"condition": "service_healthy"}}


def test_the_replicas_listen_on_distinct_host_ports() -> None:
    published = []
    for name in REPLICAS:
        (mapping,) = service(name)["ports"]
        host, container = mapping.split(":")
        assert int(container) == Settings.from_env(replica_env(name), env_file=None).web_port
        published.append(int(host))
    assert published == [8001, 8002]
    volumes = [service(name)["volumes"][0].split(":")[0] for name in REPLICAS]
    assert len(set(volumes)) == 2, "each replica its own data folder"


def test_only_replica_a_runs_the_chat_bots() -> None:
    assert {"DISCORD_TOKEN", "TELEGRAM_TOKEN"} <= set(service("imagine-a")["environment"])
    assert not [k for k in service("imagine-b")["environment"] if k.startswith(("DISCORD_", "TELEGRAM_"))]


def test_the_commands_are_real_imagine_subcommands() -> None:
    parser = imagine.build_parser()
    commands = [service(name)["command"] for name in REPLICAS]
    commands.append(exec_form(GATEWAY_DOCKERFILE.read_text().split("\nCMD ", 1)[1]))
    for command in commands:
        assert command[0] == "imagine", command
        assert parser.parse_args(command[1:]).command == "run"


def test_the_gateway_image_is_the_light_install_run_unprivileged() -> None:
    text = GATEWAY_DOCKERFILE.read_text()
    assert "RUN pip install /app\n" in text and "[backend]" not in text.split("\nRUN pip", 1)[1]
    assert "torch" not in text.replace("No PyTorch", "").replace("no PyTorch", "")
    assert re.search(r"^USER imagine$", text, re.M)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".env", "data", "docker-compose.yml", "Dockerfile.gateway"} <= set(ignored)


def test_the_worker_services_answer_to_the_replicas_backend_url() -> None:
    host = urlsplit(environment("imagine-a")["IMAGINE_BACKEND_URL"])
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert host.hostname == "worker" and f"PORT={host.port}" in dockerfile
    key = service("imagine-a")["environment"]["IMAGINE_BACKEND_API_KEY"]
    gpu, demo = service("worker"), service("worker-demo")
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["dockerfile"] == "Dockerfile"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert demo["profiles"] == ["demo"] and demo["build"]["args"]["IMAGINE_MODEL"] == "tiny"
    assert "worker" in demo["networks"]["default"]["aliases"]
    assert "deploy" not in demo, "the demo worker runs on the CPU"
    for worker in (gpu, demo):
        assert worker["environment"]["IMAGINE_BACKEND_API_KEY"] == key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_two_replicas_start_at_once_on_one_postgres_and_pass_their_healthcheck(
    postgres_url: str, tmp_path: Path
) -> None:
    """The replicas as compose starts them (both at once on a fresh database), outside Docker."""
    check = service("imagine-a")["healthcheck"]["test"]
    assert check[:2] == ["CMD", "python"] and ":8000/healthz" in check[-1]
    base = {k: v for k, v in os.environ.items() if not k.startswith((*OURS, "REPLICATE_"))}
    # The test server trusts loopback, so a password in the URL is never asked for, only carried.
    password = "pw-that-must-not-be-logged"
    database = postgres_url.replace("postgresql://postgres@", f"postgresql://postgres:{password}@")
    assert password in database
    replicas: list[tuple[Imagine, int]] = []
    try:
        for name in REPLICAS:
            port = free_port()
            data = tmp_path / name
            data.mkdir()
            env = {**base, **replica_env(name)}
            env.update(IMAGINE_DB=database, IMAGINE_DATA_DIR=str(data), IMAGINE_WEB_PORT=str(port))
            replicas.append((Imagine(["run"], env, tmp_path), port))
        for replica, port in replicas:
            replica.read_until("imagine: backend http")
            probe = [sys.executable, *(word.replace(":8000/", f":{port}/") for word in check[2:])]
            done = subprocess.run(probe, capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, done.stderr
        for replica, _ in replicas:
            replica.proc.send_signal(signal.SIGTERM)
        for replica, _ in replicas:
            assert replica.finish() == 0, "\n".join(replica.lines)
            assert password not in "\n".join(replica.lines), "the password never appears in logs"
    finally:
        for replica, _ in replicas:
            replica.kill()
