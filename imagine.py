"""The `imagine` command: the one place that wires settings -> storage -> backend -> gateway -> fronts.

No part of the project imports this module.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from gateway import (
    Backend,
    ImageRequest,
    ImagineError,
    ImagineService,
    InvalidRequest,
    JobFailed,
    Settings,
    SettingsError,
    create_backend,
    parse_prompt,
    parse_user,
    validate,
)
from gateway.accounts import Accounts
from gateway.errors import quoted
from gateway.fronts import FRONTS, Front, secret_values
from gateway.request import MAX_SEED
from storage import Database

log = logging.getLogger("imagine")

EXIT_OK, EXIT_ERROR, EXIT_INVALID, EXIT_REFUSED, EXIT_FAILED = 0, 1, 2, 3, 4


class SecretFilter(logging.Filter):
    """Replace every configured secret in log records (httpx logs Telegram URLs with the token)."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            if any(s in message for s in self.secrets):
                for s in self.secrets:
                    message = message.replace(s, "**********")
                record.msg, record.args = message, None
        return True


def setup_logging(settings: Settings, *, verbose: bool = False) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(SecretFilter(secret_values(settings)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("httpx", "httpcore", "discord", "telegram", "urllib3", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextlib.asynccontextmanager
async def open_service(
    settings: Settings, *, backend: Backend | None = None
) -> AsyncIterator[ImagineService]:
    """Database, backend and gateway, started and closed in order."""
    db = await Database.open(settings.store)
    try:
        backend = backend or create_backend(settings)
        await backend.start()
        try:
            service = ImagineService(settings, db, backend)
            await service.start()
            try:
                yield service
            finally:
                await service.close()
        finally:
            await backend.close()
    finally:
        await db.close()


@contextlib.asynccontextmanager
async def open_accounts(settings: Settings) -> AsyncIterator[Accounts]:
    """Quotas, bans and stats over the database alone, for admin commands (no backend is loaded)."""
    db = await Database.open(settings.store)
    try:
        yield Accounts(settings, db)
    finally:
        await db.close()


# --- commands -------------------------------------------------------------------------------


#: The prompt of `imagine upscale` when none is given: the validator refuses an empty one, and a
#: refinement at strength 0.3 wants words that ask for detail rather than for a subject.
DEFAULT_UPSCALE_PROMPT = "a detailed, sharp, high quality image"


def read_picture_file(name: str) -> bytes:
    """The bytes of a picture named on the command line, or one sentence why not (exit 2)."""
    from gateway.picture import MAX_PICTURE_BYTES

    path = Path(name)
    try:
        if path.stat().st_size > MAX_PICTURE_BYTES:
            size = path.stat().st_size / 2**20
            raise InvalidRequest(
                f"The picture is {size:.1f} MB; the limit is {MAX_PICTURE_BYTES // 2**20} MB."
            )
        return path.read_bytes()
    except OSError as exc:
        raise InvalidRequest(f"Cannot read the picture {quoted(name)}: {exc.strerror or exc}.") from None


def action_request(args: argparse.Namespace) -> ImageRequest:
    """The request of `generate` (with --image), `upscale` or `vary`; bad input fails here, before any
    model is loaded."""
    from gateway import picture

    if args.command == "generate":
        image = read_picture_file(args.image) if args.image is not None else None
        return parse_prompt(args.prompt, image=image)
    data = read_picture_file(args.input)
    if args.command == "upscale":
        source = parse_prompt(args.prompt or DEFAULT_UPSCALE_PROMPT)
        seed = source.seed if source.seed is not None else random.randrange(MAX_SEED)
        return validate(picture.upscale(source, data, seed=seed))
    return validate(picture.vary(parse_prompt(args.prompt), data, strong=args.strong))


async def cmd_generate(settings: Settings, args: argparse.Namespace) -> int:
    from bots.terminal import TerminalFront

    request = action_request(args)
    async with open_service(settings) as service:
        front = TerminalFront(service)
        paths, result = await front.generate(request, args.output)
    print(front.summary(paths, result))
    return EXIT_OK


async def cmd_quota(settings: Settings, args: argparse.Namespace) -> int:
    return await _admin(settings, {"show": "show", "set": "setquota", "grant": "grant"}[args.action], args)


async def cmd_ban(settings: Settings, args: argparse.Namespace) -> int:
    return await _admin(settings, "ban", args)


async def cmd_unban(settings: Settings, args: argparse.Namespace) -> int:
    return await _admin(settings, "unban", args)


async def _admin(settings: Settings, command: str, args: argparse.Namespace) -> int:
    from gateway.admin import run_admin

    user = parse_user(args.user, "cli")
    rest = [args.n] if getattr(args, "n", None) is not None else list(getattr(args, "reason", []))
    usage = f"N must be a whole number; got {quoted(rest[0])}." if rest else ""
    async with open_accounts(settings) as accounts:
        print(await run_admin(accounts, None, command, user, rest, usage=usage))
    return EXIT_OK


async def cmd_budget(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.admin import run_budget

    usage = (
        f"AMOUNT must be a number (this month's ceiling) or `default`; got {quoted(args.amount)}."
        if args.amount is not None
        else ""
    )
    async with open_accounts(settings) as accounts:
        words = [args.amount] if args.amount is not None else []
        print(await run_budget(accounts, None, words, usage=usage))
    return EXIT_OK


async def cmd_stats(settings: Settings, args: argparse.Namespace) -> int:
    async with open_accounts(settings) as accounts:
        stats = await accounts.stats(None)
        print(json.dumps(stats, indent=2, sort_keys=True) if args.json else accounts.stats_text(stats))
    return EXIT_OK


async def cmd_db_copy(settings: Settings, args: argparse.Namespace) -> int:
    from storage.copy import CopyFailed, CopyInputError, TargetNotEmpty, copy_store

    try:
        report = await copy_store(Path(args.sqlite_file), args.postgres_url)
    except CopyInputError as exc:
        raise InvalidRequest(str(exc)) from None
    except CopyFailed as exc:
        print(f"imagine: {exc}", file=sys.stderr)
        return EXIT_REFUSED if isinstance(exc, TargetNotEmpty) else EXIT_ERROR
    print(f"imagine: copied {report.source} to {report.target} in {report.seconds:.1f} s")
    width = max(map(len, report.rows))
    for table, rows in report.rows.items():
        print(f"  {table:<{width}}  {rows:>9}")
    print("imagine: verified on the target: balances equal the ledger, every table's rows match. done")
    return EXIT_OK


def cmd_download_model(settings: Settings, args: argparse.Namespace) -> int:
    from backend.models import download_model

    model = args.model or settings.model
    path = download_model(model)
    print(f"{model} is ready at {path}")
    return EXIT_OK


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from backend.worker import serve

    serve(settings, host=args.host, port=args.port)
    return EXIT_OK


async def serve_fronts(settings: Settings, which: Sequence[str], *, announce_off: bool = False) -> int:
    """Run fronts until SIGTERM/SIGINT, then stop taking work, finish or refund, exit 0."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with open_service(settings) as service:
        fronts = [FRONTS[name].build(settings, service) for name in which]
        started: list[Front] = []
        try:
            for front in fronts:
                where = await front.start()
                started.append(front)
                print(f"imagine: {front.name} is on: {where}", flush=True)
            off = [name for name in FRONTS if name not in which]
            if off and announce_off:
                print(f"imagine: off: {', '.join(off)} (set its token to turn it on)", flush=True)
            print(f"imagine: backend {settings.backend}, model {settings.model}", flush=True)
            print(f"imagine: store {settings.store_name}", flush=True)
            await stop.wait()
            print("imagine: stopping: no new work; finishing or refunding what is in flight", flush=True)
        finally:
            for front in reversed(started):
                with contextlib.suppress(Exception):
                    await front.stop()
    print("imagine: stopped", flush=True)
    return EXIT_OK


def _run_fronts(which: Sequence[str]) -> Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]:
    async def command(settings: Settings, args: argparse.Namespace) -> int:
        run_all = list(which) == ["all"]
        wanted = [spec.name for spec in FRONTS.values() if spec.enabled(settings)] if run_all else list(which)
        for name in wanted:
            if not FRONTS[name].enabled(settings):
                raise SettingsError(FRONTS[name].missing())
        return await serve_fronts(settings, wanted, announce_off=run_all)

    return command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagine", description="Stable Diffusion for Discord, Telegram and the web."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("run", help="every configured front in one process (the main job)").set_defaults(
        run=_run_fronts(["all"])
    )
    for name, spec in FRONTS.items():
        sub.add_parser(name, help=f"{spec.title} alone").set_defaults(run=_run_fronts([name]))

    p = sub.add_parser("worker", help="the GPU worker HTTP service (Cog prediction protocol)")
    p.add_argument(
        "--host",
        help="address to listen on: 0.0.0.0 by default with IMAGINE_BACKEND_API_KEY set; "
        "without the key 127.0.0.1, and only loopback is allowed",
    )
    p.add_argument("--port", type=int, default=8001)
    p.set_defaults(sync=cmd_worker)

    p = sub.add_parser("generate", help="one image through the gateway, as cli:<your login>")
    p.add_argument("prompt", help='the prompt with flags, e.g. "a red fox --seed 7 --ar 16:9"')
    p.add_argument(
        "--image",
        metavar="FILE",
        help="an image prompt: start from this PNG, JPEG or WebP picture (--strength in the prompt, "
        "0.05 to 1, default 0.6); the output takes its aspect ratio unless --ar or --size is given",
    )
    p.add_argument("-o", "--output", help="PNG file to write (several images: name-1.png, ...)")
    p.set_defaults(run=cmd_generate)

    p = sub.add_parser("upscale", help="a picture at twice each side (up to 2048), refined")
    p.add_argument("input", metavar="IN", help="the PNG, JPEG or WebP picture to upscale")
    p.add_argument(
        "prompt",
        nargs="?",
        help="what the picture shows, to refine it with (flags such as --seed and --steps work); "
        f'default: "{DEFAULT_UPSCALE_PROMPT}"',
    )
    p.add_argument("-o", "--output", help="PNG file to write")
    p.set_defaults(run=cmd_generate)

    p = sub.add_parser("vary", help="a variation of a picture: its composition kept, a new seed")
    p.add_argument("input", metavar="IN", help="the PNG, JPEG or WebP picture to vary")
    p.add_argument("prompt", help="what the picture shows (flags such as --steps work)")
    p.add_argument("--strong", action="store_true", help="loosen the composition (strength 0.7, not 0.35)")
    p.add_argument("-o", "--output", help="PNG file to write")
    p.set_defaults(run=cmd_generate)

    p = sub.add_parser("quota", help="admin: show, set or grant credits")
    qsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    qs = qsub.add_parser("show", help="a user's quota")
    qs.add_argument("user")
    qs = qsub.add_parser("set", help="a user's daily allowance (or 'default')")
    qs.add_argument("user")
    qs.add_argument("n")
    qs = qsub.add_parser("grant", help="bonus credits that do not expire (negative takes back)")
    qs.add_argument("user")
    qs.add_argument("n")
    p.set_defaults(run=cmd_quota)

    p = sub.add_parser("ban", help="admin: ban a user")
    p.add_argument("user")
    p.add_argument("reason", nargs="*")
    p.set_defaults(run=cmd_ban)
    p = sub.add_parser("unban", help="admin: lift a ban")
    p.add_argument("user")
    p.set_defaults(run=cmd_unban)
    p = sub.add_parser("budget", help="admin: this month's GPU budget; with AMOUNT, set this month's ceiling")
    p.add_argument("amount", nargs="?", help="in the currency of IMAGINE_GPU_COST_PER_SECOND, or `default`")
    p.set_defaults(run=cmd_budget)
    p = sub.add_parser("stats", help="admin: jobs, credits and users of the last 24 hours")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_stats)

    p = sub.add_parser("db", help="admin: the store itself")
    dsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    dc = dsub.add_parser(
        "copy",
        help="move a SQLite store, ledger and all, into an empty PostgreSQL database (stop the bots first)",
    )
    dc.add_argument("sqlite_file", metavar="SQLITE_FILE")
    dc.add_argument("postgres_url", metavar="POSTGRES_URL", help="postgresql://user:password@host:5432/db")
    p.set_defaults(run=cmd_db_copy)

    p = sub.add_parser("download-model", help="fetch model weights ahead of time (Docker build)")
    p.add_argument("model", nargs="?")
    p.set_defaults(sync=cmd_download_model)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"imagine: {exc}", file=sys.stderr)
        return EXIT_INVALID
    setup_logging(settings, verbose=args.verbose)
    try:
        if hasattr(args, "sync"):
            code: int = args.sync(settings, args)
            return code
        run: Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]] = args.run
        return asyncio.run(run(settings, args))
    except (InvalidRequest, SettingsError) as exc:
        print(f"imagine: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except JobFailed as exc:
        print(f"imagine: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except ImagineError as exc:
        print(f"imagine: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a clear line rather than a traceback; -v shows the traceback
        log.debug("failed", exc_info=True)
        message: Any = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        print(f"imagine: {message}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
