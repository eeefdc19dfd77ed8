"""The local Apache Kafka broker's distribution: its jars fetched once from Maven Central with
`mvn`, its rendered config, and a KRaft cluster id by Kafka's own rule."""

from __future__ import annotations

import base64
import logging
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from monitor.dev.service_config import ServiceConfig
from monitor.exceptions import ServicesError

log = logging.getLogger(__name__)

# Kafka's reserved ids (Uuid.ZERO_UUID and Uuid.METADATA_TOPIC_ID), which Uuid.randomUuid() never returns.
_RESERVED_IDS = frozenset({uuid.UUID(int=0), uuid.UUID(int=1)})


def kafka_cluster_id(random_uuid: Callable[[], uuid.UUID] = uuid.uuid4) -> str:
    """A KRaft cluster id by Kafka's own rule (Uuid.randomUuid): 22 characters of URL-safe base64
    of a random UUID, drawn again while it is reserved or starts with "-" (which the storage tool
    would parse as an option: "argument --cluster-id/-t: expected one argument")."""
    while True:
        drawn = random_uuid()
        text = base64.urlsafe_b64encode(drawn.bytes).decode().rstrip("=")
        if drawn not in _RESERVED_IDS and not text.startswith("-"):
            return text


def _require(tool: str, install: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ServicesError(f"{tool} not found: install {install}")
    return path


def _template(name: str) -> str:
    return resources.files("monitor.kafka_dist").joinpath(name).read_text(encoding="utf-8")


def render_server_properties(config: ServiceConfig, security: str | None = None) -> str:
    """The broker's server.properties for `config`: a PLAINTEXT client listener, or with `security`
    (the lines of monitor/dev/secure.py) a SASL_SSL one."""
    ports = {"port": config.kafka_port, "controller_port": config.kafka_controller_port}
    return _template("server.properties.tmpl").format(
        **ports,
        data_dir=config.kafka_dir / "data",
        listener="PLAINTEXT" if security is None else "SASL_SSL",
        security=security or "",
    )


def fetch_kafka(config: ServiceConfig) -> Path:
    """Fetch the broker's jars from Maven Central into the cache, once, and return the libs dir."""
    dist = config.cache_dir.absolute() / f"kafka-{config.kafka_version}"
    libs = dist / "libs"
    # Only a complete fetch is ever renamed to libs/, so its existence means complete.
    if libs.is_dir():
        return libs
    mvn = _require("mvn", "Apache Maven (apt-get install maven)")
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "pom.xml").write_text(_template("pom.xml"), encoding="utf-8")
    for partial in dist.glob(".libs-partial-*"):
        # Left by an interrupted fetch; a recent one may belong to a fetch that is still running.
        if time.time() - partial.stat().st_mtime > 3600:
            shutil.rmtree(partial, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".libs-partial-", dir=dist))
    log.info("fetching Apache Kafka %s jars from Maven Central into %s", config.kafka_version, libs)
    cmd = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(dist / "pom.xml"),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={tmp}",
        f"-Dkafka.version={config.kafka_version}",
    ]
    try:
        done = subprocess.run(cmd, cwd=dist, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0 or not (tmp / f"kafka_2.13-{config.kafka_version}.jar").exists():
            output = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)  # mvn colours even with -B
            tail = "\n".join(output.strip().splitlines()[-20:])
            raise ServicesError(
                f"mvn failed to fetch the Kafka {config.kafka_version} jars (exit {done.returncode}):\n{tail}"
            )
        try:
            tmp.rename(libs)
        except OSError:
            if not libs.is_dir():  # else a concurrent fetch renamed first: its jars are as good
                raise
    except subprocess.TimeoutExpired:
        raise ServicesError(
            "mvn took over 15 min to fetch the Kafka jars; is Maven Central reachable?"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return libs
