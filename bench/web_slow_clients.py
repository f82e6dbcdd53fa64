"""/healthz while slow clients hold sockets open: `imagine web` (fake backend) on loopback.

A slow client connects and sends half a request head, then nothing ("slowloris"). The attacker here
keeps N such sockets open at all times: whenever the server closes one (a deadline, the cap), it
opens another. Meanwhile a health checker asks GET /healthz on a new connection every 10 ms, as a
load balancer does, giving each answer 2 s (a row stops after 30 s). The server runs under the usual
soft open-file limit of 1,024 (the hard limit is left as it is), where the old code runs out of
descriptors.

    python bench/web_slow_clients.py                       # this checkout
    python bench/web_slow_clients.py --baseline 77c320d    # and that commit, in the same run
    python bench/web_slow_clients.py --quick               # a smoke run
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOFT_FD_LIMIT = 1024
HALF_HEAD = b"GET / HTTP/1.1\r\nHost: imagine\r\nX-Slow: "
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: imagine\r\nConnection: close\r\n\r\n"
ANSWER_WITHIN = 2.0
#: A row stops after this long even if probes are left (each unanswered one costs ANSWER_WITHIN).
ROW_SECONDS = 30.0


def start_server(root: Path, tmp: Path) -> tuple[subprocess.Popen[str], int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGINE_", "DISCORD_", "TELEGRAM_"))}
    env.update(
        IMAGINE_DB=str(tmp / "bench.sqlite3"),
        IMAGINE_BACKEND="fake",
        IMAGINE_WEB_HOST="127.0.0.1",
        IMAGINE_WEB_PORT="0",
        PYTHONPATH=str(root),
    )
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]

    def usual_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT_FD_LIMIT, hard))

    proc = subprocess.Popen(
        [sys.executable, "-c", "import imagine; imagine.main()", "web"],
        cwd=tmp,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=usual_limit,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "imagine: web is on: " in line:
            port = int(line.rsplit(":", 1)[1].strip().rstrip("/"))
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep its pipe drained
            return proc, port
    raise SystemExit("imagine web did not start")


class Attacker:
    """Keeps ``count`` half-sent requests open against the port, replacing any the server closes."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self.reopened = 0
        self.selector = selectors.DefaultSelector()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._hold, daemon=True)

    def __enter__(self) -> Attacker:
        for _ in range(self.count):
            self._open()
        self.thread.start()
        time.sleep(1.0)  # let the server take them all in
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        self.thread.join()
        for key in list(self.selector.get_map().values()):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            sock.close()
        self.selector.close()

    def _open(self) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=ANSWER_WITHIN)
            sock.sendall(HALF_HEAD)
        except OSError:
            return
        sock.setblocking(False)
        self.selector.register(sock, selectors.EVENT_READ)

    def _hold(self) -> None:
        while not self.stopping.is_set():
            for key, _ in self.selector.select(timeout=0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                self.selector.unregister(sock)
                sock.close()
                self.reopened += 1
                self._open()
            missing = self.count - len(self.selector.get_map())
            for _ in range(max(0, missing)):
                self._open()


@dataclass
class Row:
    code: str
    slow: int
    latencies: list[float] = field(default_factory=list)
    failed: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    reopened: int = 0

    def percentile(self, p: float) -> str:
        ordered = sorted(self.latencies)
        if not ordered:
            return "-"
        return f"{ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000:.1f}"


def healthz(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_WITHIN) as sock:
        sock.settimeout(ANSWER_WITHIN)
        sock.sendall(HEALTHZ)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer.split()[1])


def measure(code: str, root: Path, slow: int, probes: int) -> Row:
    row = Row(code, slow)
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_server(root, Path(tmp))
        try:
            with Attacker(port, slow) as attacker:
                give_up = time.monotonic() + ROW_SECONDS
                for _ in range(probes):
                    if time.monotonic() > give_up:
                        break
                    started = time.perf_counter()
                    try:
                        status = healthz(port)
                    except OSError:
                        row.failed += 1
                    else:
                        row.latencies.append(time.perf_counter() - started)
                        row.statuses[status] = row.statuses.get(status, 0) + 1
                    time.sleep(0.01)
                row.reopened = attacker.reopened
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return row


def checkout(rev: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", help="a git revision to measure too, e.g. the commit before the fix")
    parser.add_argument("--quick", action="store_true", help="fewer probes and only 1,000 slow sockets")
    args = parser.parse_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this process holds the slow sockets
    probes = 100 if args.quick else 300
    counts = [0, 1000] if args.quick else [0, 1000, 2000]
    load_before = os.getloadavg()[0]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        roots = [("this checkout", ROOT)]
        if args.baseline:
            roots.insert(0, (f"baseline {args.baseline}", checkout(args.baseline, Path(tmp))))
        for code, root in roots:
            for slow in counts:
                rows.append(measure(code, root, slow, probes))
                print(f"  {code}, {slow} slow sockets: done", file=sys.stderr)
    print(
        f"`imagine web` on loopback, soft open-file limit {SOFT_FD_LIMIT} (hard {hard}) · "
        f"{platform.python_implementation()} {platform.python_version()} · {os.cpu_count()} CPUs · "
        f"load average before/after {load_before:.2f} / {os.getloadavg()[0]:.2f}"
    )
    print()
    print(
        f"| code | slow sockets held | /healthz probes | answered within {ANSWER_WITHIN:g} s | statuses "
        "| p50 ms | p99 ms | slow sockets the server closed |"
    )
    print("|---|---:|---:|---:|---|---:|---:|---:|")
    for row in rows:
        statuses = ", ".join(f"{status}: {n}" for status, n in sorted(row.statuses.items())) or "-"
        print(
            f"| {row.code} | {row.slow:,} | {len(row.latencies) + row.failed} | {len(row.latencies)} "
            f"| {statuses} | {row.percentile(50)} | {row.percentile(99)} | {row.reopened:,} |"
        )


if __name__ == "__main__":
    main()
