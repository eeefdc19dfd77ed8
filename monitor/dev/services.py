"""Start, stop and inspect the local Kafka broker and Redis server that development and tests use.

One address per service: the local services listen where the worker dials, i.e. on the ports of
`MONITOR_KAFKA_BOOTSTRAP` and `MONITOR_REDIS_URL` (the Settings). A local start needs a loopback
address there; a remote address is used if it answers and is never started here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitor.dev import secure
from monitor.dev.kafka import _require, _template, fetch_kafka, kafka_cluster_id, render_server_properties
from monitor.dev.service_config import ServiceConfig
from monitor.exceptions import ServicesError

__all__ = [
    "REDIS_PERSISTENCE",
    "ServiceConfig",
    "ServiceStatus",
    "ServicesError",
    "down",
    "fetch_kafka",
    "kafka_cluster_id",
    "status",
    "up",
]

log = logging.getLogger(__name__)

_STOP_TIMEOUT_S = 20.0
# Starts "$@" in the background with output to the log file "$0" and prints its pid, then exits:
# the service is then no child of ours, so that nothing of ours has to reap it (a zombie still
# "exists" for kill(pid, 0)) and no Popen object warns that it is "still running".
_LAUNCH = '"$@" >>"$0" 2>&1 </dev/null & echo $!'
# The local Redis keeps its data across restarts like the one of docker-compose.yml: an append-only
# file in its state dir, fsynced once a second (at most a second of writes lost on a crash); no RDB
# snapshots besides, the AOF is the one copy.
REDIS_PERSISTENCE = ("--appendonly", "yes", "--appendfsync", "everysec", "--save", "")


@dataclass(frozen=True)
class ServiceStatus:
    """What up() made available, and how long that took."""

    kafka_bootstrap: str
    redis_url: str
    kafka_external: bool
    redis_external: bool
    startup_s: float


@dataclass(frozen=True)
class _Service:
    name: str
    pidfile: Path
    marker: str  # in the command line of every process of this kind, to tell a recycled pid
    port: int
    address_env: str
    answers: Callable[[], bool]
    logfile: Path


def _services(config: ServiceConfig) -> tuple[_Service, _Service]:
    kdir, rdir = config.kafka_dir, config.redis_dir
    # Redis rewrites its process title, so its own name is all of its command line that is left.
    return (
        _Service(
            "Kafka",
            kdir / "kafka.pid",
            "kafka.Kafka",
            config.kafka_port,
            "MONITOR_KAFKA_BOOTSTRAP",
            lambda: _kafka_answers(config.kafka_bootstrap, options=_probe_options(config)[0]),
            kdir / "kafka.log",
        ),
        _Service(
            "Redis",
            rdir / "redis.pid",
            "redis-server",
            config.redis_port,
            "MONITOR_REDIS_URL",
            lambda: _redis_answers(config.redis_url, options=_probe_options(config)[1]),
            rdir / "redis.log",
        ),
    )


def _probe_options(config: ServiceConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Kafka and Redis client options that reach the services of `config`."""
    made = secure.load(config) if config.secure else None
    if made is not None:
        return made.kafka_security.client_options(), made.redis_options()
    return config.kafka_options, config.redis_options


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        # A zombie that its parent does not reap still "exists"; its state, in field 3 of stat, is Z.
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except ProcessLookupError:
        return False
    except (OSError, IndexError):  # not ours to signal, or no /proc: alive as far as we can tell
        return True


def _read_pid(svc: _Service) -> int | None:
    """The pid in the service's pid file if that process is alive and ours; removes a stale pid file."""
    try:
        pid = int(svc.pidfile.read_text().strip())
        # A dead service's pid may have been recycled by an unrelated process. An empty command
        # line is a process still in exec(), just started: trusted.
        cmdline = Path(f"/proc/{pid}/cmdline")
        command = cmdline.read_bytes() if cmdline.parent.exists() else b""
        if _alive(pid) and (not command or svc.marker.encode() in command):
            return pid
    except (OSError, ValueError):
        pass
    svc.pidfile.unlink(missing_ok=True)
    return None


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _kafka_answers(bootstrap: str, timeout_s: float = 3.0, options: dict[str, Any] | None = None) -> bool:
    # aiokafka ships no type information; the ignore stays harmless where mypy is told to skip it.
    from aiokafka.client import AIOKafkaClient  # type: ignore[import-untyped, unused-ignore]

    async def metadata() -> bool:
        client = AIOKafkaClient(
            bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000), **(options or {})
        )
        try:
            await asyncio.wait_for(client.bootstrap(), timeout_s)
            cluster = await asyncio.wait_for(client.fetch_all_metadata(), timeout_s)
            # A broker that has not registered with its controller yet lists no brokers.
            return bool(cluster.brokers())
        finally:
            await client.close()

    try:
        # Not asyncio.run(): that would reset the thread's current event loop (pytest-asyncio's, say).
        with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
            return runner.run(metadata())
    except Exception:  # whatever went wrong, the answer is "not a usable broker (yet)"
        return False


def _redis_answers(url: str, timeout_s: float = 3.0, options: dict[str, Any] | None = None) -> bool:
    import redis

    timeouts = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    try:
        with redis.Redis.from_url(url, **timeouts, **(options or {})) as client:
            return bool(client.ping())
    except Exception:  # whatever went wrong, the answer is "not a usable server (yet)"
        return False


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(empty)"
    except OSError:
        return "(no log)"


def _spawn(cmd: list[str], cwd: Path, logfile: Path, pidfile: Path) -> int:
    # A session of its own: the service outlives this process and ignores the terminal's Ctrl-C.
    launched = subprocess.run(
        ["/bin/sh", "-c", _LAUNCH, str(logfile), *cmd],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
        start_new_session=True,
    )
    pid = int(launched.stdout)
    pidfile.write_text(f"{pid}\n")
    return pid


def _start_kafka(
    config: ServiceConfig, libs: Path, java: str, made: secure.SecureServices | None = None
) -> int:
    kdir = config.kafka_dir
    (kdir / "data").mkdir(parents=True, exist_ok=True)
    props, log4j = kdir / "server.properties", kdir / "log4j2.properties"
    props.touch(mode=0o600)  # with --secure, it holds the SASL passwords
    props.write_text(
        render_server_properties(config, made.kafka_properties() if made else None), encoding="utf-8"
    )
    log4j.write_text(_template("log4j2.properties"), encoding="utf-8")
    jvm = [java, "-cp", f"{libs}/*", f"-Dlog4j2.configurationFile={log4j}"]
    formatted, scram = kdir / "data" / "meta.properties", kdir / "data" / ".aimon-scram-users"
    if made is not None and formatted.exists() and not scram.exists():
        raise ServicesError(
            f"the Kafka data in {kdir / 'data'} was formatted without the SCRAM users of --secure; "
            "remove that directory (its topics go with it) or use another MONITOR_STATE_DIR"
        )
    if not formatted.exists():
        # `--cluster-id=ID`, one argument, besides an id that never starts with "-".
        fmt = subprocess.run(
            [
                *jvm,
                "kafka.tools.StorageTool",
                "format",
                f"--cluster-id={kafka_cluster_id()}",
                "-c",
                str(props),
                *(made.scram_format_args() if made is not None else []),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if fmt.returncode != 0:
            raise ServicesError(
                f"formatting the Kafka storage in {kdir / 'data'} failed:\n"
                + fmt.stderr.strip()  # its stdout would show the SCRAM records
            )
        if made is not None:
            scram.touch()
    logfile = kdir / "kafka.log"
    if logfile.exists():  # the previous run's log may tell why that run died
        logfile.replace(kdir / "kafka.log.1")
    cmd = [*jvm, f"-Xmx{config.kafka_heap}", "kafka.Kafka", str(props)]
    return _spawn(cmd, kdir, logfile, kdir / "kafka.pid")


def _start_redis(config: ServiceConfig, server: str, made: secure.SecureServices | None = None) -> int:
    rdir = config.redis_dir
    rdir.mkdir(parents=True, exist_ok=True)
    listen = ["--port", str(config.redis_port)] if made is None else made.redis_args()
    cmd = [
        server,
        "--bind",
        "127.0.0.1",
        *listen,
        "--dir",
        str(rdir),
        *REDIS_PERSISTENCE,
        "--daemonize",
        "no",
        "--logfile",
        str(rdir / "redis.log"),
    ]
    return _spawn(cmd, rdir, rdir / "redis.log", rdir / "redis.pid")


def _stop(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)  # Kafka does a controlled shutdown on SIGTERM
    deadline = time.monotonic() + _STOP_TIMEOUT_S
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids:
        if _alive(pid):
            log.warning("pid %d did not exit within %.0f s of SIGTERM; killing it", pid, _STOP_TIMEOUT_S)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _plan(svc: _Service) -> str:
    """ "ours" if we run it, "foreign" if some other server of its kind holds its port, else "start"."""
    if _read_pid(svc) is not None:
        return "ours"
    if not _port_open(svc.port):
        return "start"
    if not svc.answers():
        raise ServicesError(
            f"port {svc.port} is taken by a process that does not answer as {svc.name}; "
            f"stop it or point {svc.address_env} at a free port"
        )
    log.warning(
        "%s on port %d was not started from %s; using it as it is", svc.name, svc.port, svc.pidfile.parent
    )
    return "foreign"


def _remote(env: str, value: str | None, answers: Callable[[str, float], bool]) -> bool:
    """Whether the service is the remote one at `value` (which answers); refuses one that does not."""
    if value is None:
        return False
    if answers(value, 5.0):
        log.info("using the running service at %s=%s", env, value)
        return True
    # Never a local one elsewhere instead: the worker would dial `value` all the same.
    raise ServicesError(
        f"{env}={value} does not answer, and a local service starts only at a loopback "
        f"address (127.0.0.1:PORT); start that service or point {env} at 127.0.0.1"
    )


def _wait(waiting: list[_Service], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while waiting:
        for svc in list(waiting):
            if _read_pid(svc) is None:
                raise ServicesError(
                    f"{svc.name} exited while starting; last lines of {svc.logfile}:\n" + _tail(svc.logfile)
                )
            # The TCP probe first: it is cheap, and spares the client's own connection-error logging.
            if _port_open(svc.port) and svc.answers():
                waiting.remove(svc)
        if waiting and time.monotonic() > deadline:
            svc = waiting[0]
            raise ServicesError(
                f"{svc.name} did not answer within {timeout_s:.0f} s (`monitor services "
                f"down` stops it); last lines of {svc.logfile}:\n{_tail(svc.logfile)}"
            )
        if waiting:
            time.sleep(0.3)


def up(config: ServiceConfig | None = None, *, timeout_s: float = 120.0) -> ServiceStatus:
    """Start the Kafka broker and Redis, or reuse running ones, and wait until both answer.

    Synchronous, with event loops of its own for the probes: do not call it in a thread that has a
    running event loop (there, use `await asyncio.to_thread(up)`).
    """
    started_at = time.monotonic()
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass  # no loop runs in this thread, as it must be
    else:  # every Kafka probe would fail, as a loop cannot run in a running one: up() would time out
        raise RuntimeError("services.up() is synchronous: in async code, use asyncio.to_thread(up)")
    config = config or ServiceConfig.from_env()
    kafka, redis_ = _services(config)
    if not config.secure and secure.started_secure(config) and _read_pid(kafka) is not None:
        raise ServicesError(
            f"the services of {config.state_dir} run with TLS and SASL: use `monitor services up --secure` "
            "(or the settings of its secure.env), or `monitor services down` first"
        )
    # Certificates and passwords first: the probes of running secure services need them too.
    made = secure.ensure(config) if config.secure else None
    remote_kafka = _remote(
        "MONITOR_KAFKA_BOOTSTRAP",
        config.kafka_remote,
        lambda address, timeout_s: _kafka_answers(address, timeout_s, config.kafka_options),
    )
    kafka_plan = "external" if remote_kafka else _plan(kafka)
    remote_redis = _remote(
        "MONITOR_REDIS_URL",
        config.redis_remote,
        lambda address, timeout_s: _redis_answers(address, timeout_s, config.redis_options),
    )
    redis_plan = "external" if remote_redis else _plan(redis_)
    # Everything that can fail fast is checked before anything is started.
    starts: list[Callable[[], int]] = []
    if redis_plan == "start":
        server = _require("redis-server", "it (apt-get install redis-server)")
        starts.append(lambda: _start_redis(config, server, made))
    if kafka_plan == "start":
        if _port_open(config.kafka_controller_port):
            raise ServicesError(
                f"port {config.kafka_controller_port} (Kafka controller) is taken; stop "
                "what holds it or set MONITOR_KAFKA_CONTROLLER_PORT to a free port"
            )
        java = _require("java", "OpenJDK 17 or newer (apt-get install openjdk-17-jre-headless)")
        libs = fetch_kafka(config)
        starts.append(lambda: _start_kafka(config, libs, java, made))
    started: list[int] = []
    try:
        # Both are started before either is waited for, so that their start-ups overlap.
        for start in starts:
            started.append(start())
        plans = ((kafka, kafka_plan), (redis_, redis_plan))
        # timeout_s counts from here, not from the fetch, which on a slow network may take minutes.
        _wait([svc for svc, plan in plans if plan in ("ours", "start")], timeout_s)
    except BaseException:
        # Leave nothing half-started behind; the logs stay for the error message.
        _stop(started)
        for svc in (kafka, redis_):
            _read_pid(svc)
        raise
    return ServiceStatus(
        kafka_bootstrap=config.kafka_remote or config.kafka_bootstrap,
        redis_url=config.redis_remote or config.redis_url,
        kafka_external=kafka_plan in ("external", "foreign"),
        redis_external=redis_plan in ("external", "foreign"),
        startup_s=time.monotonic() - started_at,
    )


def down(config: ServiceConfig | None = None) -> None:
    """Stop the broker and Redis started from this state dir: SIGTERM, then SIGKILL after 20 s."""
    services = _services(config or ServiceConfig.from_env())
    _stop([pid for svc in services if (pid := _read_pid(svc)) is not None])
    for svc in services:
        svc.pidfile.unlink(missing_ok=True)


def stop_kafka(config: ServiceConfig | None = None) -> None:
    """Stop only the broker (reliability tests restart it under a running worker)."""
    kafka, _ = _services(config or ServiceConfig.from_env())
    pid = _read_pid(kafka)
    if pid is None:
        raise ServicesError("no broker started by `monitor services up` is running here")
    _stop([pid])
    kafka.pidfile.unlink(missing_ok=True)


def status(config: ServiceConfig | None = None) -> dict[str, str]:
    """Whether "kafka" and "redis" run, with pid and address; drops stale pid files on the way."""
    config = config or ServiceConfig.from_env()
    result: dict[str, str] = {}
    remotes = (config.kafka_remote, config.redis_remote)
    for svc, address, remote in zip(
        _services(config), (config.kafka_bootstrap, config.redis_url), remotes, strict=True
    ):
        if remote is not None:
            result[svc.name.lower()] = f"remote at {remote} (not started here)"
            continue
        pid = _read_pid(svc)
        held = f"stopped (port {svc.port} is held by a process not started from here)"
        result[svc.name.lower()] = (
            f"running pid {pid} at {address}"
            if pid is not None
            else held
            if _port_open(svc.port)
            else "stopped"
        )
    return result
