"""A redis-server of a test's or a benchmark's own, persisted as the product ships it.

The failure tests and the soak benchmark kill and restart Redis, which they must not do to the
shared local one: each starts its own on a free port, in its own directory, with the shipped
persistence flags (`REDIS_PERSISTENCE`: append-only file, fsync every second).
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from monitor.dev.services import REDIS_PERSISTENCE


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ScratchRedis:
    """One redis-server under `root` (its data in `root/redis`, its log in `root/redis.log`)."""

    def __init__(self, root: Path) -> None:
        self.port = _free_port()
        self.dir = root / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = root / "redis.log"
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server (again: it reloads its append-only file)."""
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([*command, *REDIS_PERSISTENCE], stdout=log, stderr=log)

    async def wait_up(self, timeout_s: float = 15.0) -> None:
        """Return once the server answers PING."""
        probe = Redis.from_url(self.url)
        try:
            for _ in range(int(timeout_s * 10)):
                try:
                    await probe.ping()
                    return
                except RedisConnectionError:  # not listening yet, or still loading its file
                    await asyncio.sleep(0.1)
            raise RuntimeError(f"Redis on port {self.port} did not start:\n{self.log.read_text()[-2000:]}")
        finally:
            await probe.aclose()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop the server with `sig` (default: kill -9, no goodbye) and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(10)

    def incremental_aof(self) -> Path:
        """The append-only file Redis appends to now (Redis 7's multi-part layout)."""
        (found,) = (self.dir / "appendonlydir").glob("*.incr.aof")
        return found


__all__ = ["ScratchRedis"]
