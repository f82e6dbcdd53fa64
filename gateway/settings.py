"""All configuration in one place: environment variables, with a ``.env`` file read too."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class Secret:
    """A token or key whose ``repr``/``str`` never show the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


class SettingsError(ValueError):
    """A setting with a bad value; the message names the variable."""


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Settings:
    db_path: Path = Path("data/imagine.sqlite3")
    db_url: Secret | None = None  # IMAGINE_DB as a postgresql:// URL (it holds the password)
    backend: str = "local"
    model: str = "CompVis/stable-diffusion-v1-4"
    backend_urls: tuple[str, ...] = ()
    backend_api_key: Secret | None = None
    replicate_api_token: Secret | None = None
    replicate_model: str = "stability-ai/stable-diffusion"
    replicate_base_url: str | None = None
    replicate_delivery_hosts: tuple[str, ...] = ("replicate.delivery",)
    daily_quota: int = 25
    admins: frozenset[str] = frozenset()
    max_queued_per_user: int = 2
    max_queue: int = 100
    backend_timeout: float = 300.0
    discord_token: Secret | None = None
    telegram_token: Secret | None = None
    discord_api_base_url: str = "https://discord.com/api/v10"
    discord_gateway_url: str = "wss://gateway.discord.gg"
    telegram_api_base_url: str = "https://api.telegram.org/bot"
    telegram_webhook_url: str | None = None
    telegram_webhook_secret: Secret | None = None
    telegram_webhook_port: int = 8443
    web_host: str = "127.0.0.1"
    web_port: int = 8000
    blocked_ips: tuple[IPNetwork, ...] = ()
    trusted_proxies: tuple[IPNetwork, ...] = ()
    max_batch: int = 4
    batch_wait_ms: float = 20.0
    compile: bool = False
    data_dir: Path = Path("data")
    gpu_cost_per_second: float = 0.0
    monthly_budget: float | None = None  # GPU spend ceiling per UTC month (None: off)
    relax_daily: int = 0  # relax-lane jobs per user per day (0: the lane is off)
    admin_token: Secret | None = None  # IMAGINE_ADMIN_TOKEN: the web /admin page; off without it
    extra: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env"
    ) -> Settings:
        """Read the environment; a ``.env`` file fills in what the environment leaves unset."""
        env: dict[str, str] = {}
        if env_file is not None and Path(env_file).is_file():
            env.update(read_env_file(Path(env_file)))
        env.update(os.environ if environ is None else environ)
        return cls._parse(env)

    @classmethod
    def _parse(cls, env: Mapping[str, str]) -> Settings:
        def get(name: str) -> str | None:
            value = env.get(name)
            return value.strip() if value is not None and value.strip() else None

        kw: dict[str, Any] = {}
        if (v := get("IMAGINE_DB")) is not None:
            if v.startswith(("postgresql://", "postgres://")):
                kw["db_url"] = Secret(_postgres_url(v))
            elif "://" in v:
                scheme = v.split("://", 1)[0]
                raise SettingsError(
                    f"IMAGINE_DB must be a SQLite file or a postgresql:// URL; {scheme}:// is neither."
                )
            else:
                kw["db_path"] = Path(v)
                kw["data_dir"] = Path(v).parent
        if (v := get("IMAGINE_DATA_DIR")) is not None:
            kw["data_dir"] = Path(v)
        if (v := get("IMAGINE_BACKEND")) is not None:
            kw["backend"] = v.lower()
        if (v := get("IMAGINE_MODEL")) is not None:
            kw["model"] = v
        for name, key, parse in _VARIABLES:
            if (v := get(name)) is not None:
                kw[key] = parse(name, v)
        if kw.get("backend_timeout", 1.0) <= 0:
            raise SettingsError("IMAGINE_BACKEND_TIMEOUT must be more than 0 seconds.")
        if kw.get("monthly_budget") is not None and kw.get("gpu_cost_per_second", 0.0) <= 0:
            raise SettingsError(
                "IMAGINE_MONTHLY_BUDGET needs IMAGINE_GPU_COST_PER_SECOND (what a GPU second costs) "
                "to turn spend into GPU time."
            )
        kw["extra"] = {k: v for k, v in env.items() if k.startswith("IMAGINE_FAKE_")}
        return cls(**kw)

    @property
    def store(self) -> str | Path:
        """What ``storage.Database.open`` opens: the PostgreSQL URL, else the SQLite file."""
        return self.db_url.get() if self.db_url else self.db_path

    @property
    def store_name(self) -> str:
        """The store for logs and sentences: the file, or the URL without its password."""
        if self.db_url is None:
            return str(self.db_path)
        parts = urlsplit(self.db_url.get())
        host = parts.hostname or "localhost"
        return f"postgresql://{host}{':' + str(parts.port) if parts.port else ''}{parts.path}"

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def describe(self) -> dict[str, str]:
        """Every setting as text, secrets hidden: for `imagine` start-up logs."""
        return {f.name: repr(getattr(self, f.name)) for f in fields(self) if f.name != "extra"}


def _postgres_url(raw: str) -> str:
    """A PostgreSQL URL that names a host and a database, or one sentence (never showing the password)."""
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError:
        raise SettingsError("IMAGINE_DB is not a valid postgresql:// URL (check the port).") from None
    if not parts.path.strip("/"):
        raise SettingsError(
            "IMAGINE_DB must name the database: postgresql://user:password@host:5432/imagine."
        )
    return raw


def _int(name: str, raw: str, low: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number; got {raw!r}.") from None
    if value < low:
        raise SettingsError(f"{name} must be at least {low}; got {value}.")
    return value


def _float(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number; got {raw!r}.") from None
    if value != value or value < 0:
        raise SettingsError(f"{name} must be a number of at least 0; got {raw!r}.")
    return value


_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def ipv4_unmapped(network: IPNetwork) -> IPNetwork:
    """``::ffff:203.0.113.0/120`` as ``203.0.113.0/24``.

    Clients are matched by their IPv4 address even when a dual-stack socket shows them IPv4-mapped,
    so an entry written IPv4-mapped must be IPv4 too, or it would never match.
    """
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_IPV4_MAPPED):
        mapped = network.network_address.ipv4_mapped
        assert mapped is not None
        return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def _networks(name: str, raw: str) -> tuple[IPNetwork, ...]:
    nets: list[IPNetwork] = []
    for item in (p.strip() for p in raw.split(",")):
        if not item:
            continue
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise SettingsError(
                f"{name} takes IP addresses or networks like 203.0.113.0/24; got {item!r}."
            ) from None
        address = item.partition("/")[0]
        if network.prefixlen < 96 and ":" in address and "." in address:
            raise SettingsError(
                f"{name}: an IPv4-mapped network needs a prefix of at least /96 "
                f"(::ffff:203.0.113.0/120 is 203.0.113.0/24); got {item[:40]!r}."
            )
        nets.append(ipv4_unmapped(network))
    return tuple(nets)


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines; ``#`` comments, ``export`` and surrounding quotes allowed."""
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def require(value: Secret | None, variable: str, purpose: str) -> Secret:
    """The secret, or an error that tells the user which variable to set."""
    if not value:
        raise SettingsError(f"{purpose} needs {variable}; set it in the environment or in .env.")
    return value


def _text(name: str, raw: str) -> str:
    return raw


def _secret(name: str, raw: str) -> Secret:
    return Secret(raw)


def _at_least(low: int) -> Callable[[str, str], int]:
    return lambda name, raw: _int(name, raw, low)


def _port(name: str, raw: str) -> int:
    port = _int(name, raw, 0)
    if port > 65535:
        raise SettingsError(f"{name} must be a port number up to 65535; got {raw!r}.")
    return port


def _urls(name: str, raw: str) -> tuple[str, ...]:
    urls = tuple(u.strip().rstrip("/") for u in raw.split(",") if u.strip())
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise SettingsError(f"{name} must be http:// or https:// URLs; got {url!r}.")
    return urls


def _hosts(name: str, raw: str) -> tuple[str, ...]:
    hosts = tuple(h.strip().strip(".").lower() for h in raw.split(",") if h.strip().strip("."))
    if not hosts or any("/" in h or ":" in h for h in hosts):
        raise SettingsError(f"{name} takes host names like replicate.delivery; got {raw!r}.")
    return hosts


def _switch(name: str, raw: str) -> bool:
    if raw not in ("0", "1", "true", "false"):
        raise SettingsError(f"{name} must be 0 or 1; got {raw!r}.")
    return raw in ("1", "true")


def _users(name: str, raw: str) -> frozenset[str]:
    users = frozenset(a.strip() for a in raw.split(",") if a.strip())
    for user in users:
        if ":" not in user:
            raise SettingsError(f"{name} takes users as platform:id, e.g. discord:123; got {user!r}.")
    return users


#: Every variable read the same way: its name, the setting it fills and how its text is read.
_VARIABLES: tuple[tuple[str, str, Callable[[str, str], Any]], ...] = (
    ("IMAGINE_BACKEND_URL", "backend_urls", _urls),
    ("IMAGINE_REPLICATE_DELIVERY_HOSTS", "replicate_delivery_hosts", _hosts),
    ("IMAGINE_BACKEND_API_KEY", "backend_api_key", _secret),
    ("REPLICATE_API_TOKEN", "replicate_api_token", _secret),
    ("DISCORD_TOKEN", "discord_token", _secret),
    ("TELEGRAM_TOKEN", "telegram_token", _secret),
    ("TELEGRAM_WEBHOOK_SECRET", "telegram_webhook_secret", _secret),
    ("IMAGINE_ADMIN_TOKEN", "admin_token", _secret),
    ("IMAGINE_REPLICATE_MODEL", "replicate_model", _text),
    ("REPLICATE_BASE_URL", "replicate_base_url", _text),
    ("DISCORD_API_BASE_URL", "discord_api_base_url", _text),
    ("DISCORD_GATEWAY_URL", "discord_gateway_url", _text),
    ("TELEGRAM_API_BASE_URL", "telegram_api_base_url", _text),
    ("TELEGRAM_WEBHOOK_URL", "telegram_webhook_url", _text),
    ("IMAGINE_WEB_HOST", "web_host", _text),
    ("IMAGINE_DAILY_QUOTA", "daily_quota", _at_least(0)),
    ("IMAGINE_MAX_QUEUED_PER_USER", "max_queued_per_user", _at_least(1)),
    ("IMAGINE_MAX_QUEUE", "max_queue", _at_least(1)),
    ("IMAGINE_MAX_BATCH", "max_batch", _at_least(1)),
    ("IMAGINE_WEB_PORT", "web_port", _port),
    ("TELEGRAM_WEBHOOK_PORT", "telegram_webhook_port", _port),
    ("IMAGINE_BACKEND_TIMEOUT", "backend_timeout", _float),
    ("IMAGINE_BATCH_WAIT_MS", "batch_wait_ms", _float),
    ("IMAGINE_GPU_COST_PER_SECOND", "gpu_cost_per_second", _float),
    ("IMAGINE_MONTHLY_BUDGET", "monthly_budget", _float),
    ("IMAGINE_RELAX_DAILY", "relax_daily", _at_least(0)),
    ("IMAGINE_COMPILE", "compile", _switch),
    ("IMAGINE_ADMINS", "admins", _users),
    ("IMAGINE_BLOCKED_IPS", "blocked_ips", _networks),
    ("IMAGINE_TRUSTED_PROXIES", "trusted_proxies", _networks),
)
