"""The worker's checks before it starts: Kafka and Redis answer, and accept its credentials and its TLS.

At start, a service that is away or refuses us is a configuration error, told in one line that names
what to fix (later, at run time, an outage is waited out). The clients themselves only say "unable to
bootstrap" or "connection closed"; this module opens one connection of its own to tell why.
"""

from __future__ import annotations

import asyncio
import ssl

from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed
from redis.exceptions import AuthenticationError, RedisError, ResponseError

from monitor.exceptions import ServicesError
from monitor.security import kafka_security, redact_url, redis_client
from monitor.settings import Settings

_TIMEOUT_S = 5.0


def _hosts(bootstrap: str) -> list[tuple[str, int]]:
    found = []
    for item in bootstrap.split(","):
        host, _, port = item.strip().rpartition(":")
        found.append((host.strip("[]") or item.strip(), int(port) if port.isdigit() else 9092))
    return found


async def check_kafka(settings: Settings) -> None:
    """Connect (and authenticate) to a bootstrap broker; raises ServicesError with the reason in one line."""
    security = kafka_security(settings)
    where = f"Kafka at {settings.kafka_bootstrap}"
    problem = "no bootstrap address"
    for host, port in _hosts(settings.kafka_bootstrap):
        try:
            conn = await asyncio.wait_for(
                create_conn(
                    host, port, request_timeout_ms=int(_TIMEOUT_S * 1000), **security.client_options()
                ),
                _TIMEOUT_S + 1,
            )
        except SaslAuthenticationFailed as exc:
            raise ServicesError(
                f"{where} refused SASL authentication for user {security.username!r} "
                f"({security.sasl_mechanism}: {exc}): check MONITOR_KAFKA_SASL_USERNAME/PASSWORD "
                "and MONITOR_KAFKA_SASL_MECHANISM"
            ) from None
        except ssl.SSLCertVerificationError as exc:
            trusted = settings.kafka_ssl_cafile or "the system's CAs"
            raise ServicesError(
                f"{where} presented a certificate that is not trusted ({exc.verify_message}; "
                f"trusted: {trusted}): check MONITOR_KAFKA_SSL_CAFILE"
            ) from None
        except ssl.SSLError as exc:
            raise ServicesError(
                f"the TLS handshake with {where} failed ({exc.reason or exc}): does the listener speak "
                f"{security.protocol}? check MONITOR_KAFKA_SECURITY_PROTOCOL and the client certificate"
            ) from None
        except KafkaConnectionError as exc:
            if "closed" in str(exc) and not security.tls:
                raise ServicesError(
                    f"{where} closed the connection at once ({exc}): it probably expects TLS; "
                    f"check MONITOR_KAFKA_SECURITY_PROTOCOL (now {security.protocol})"
                ) from None
            problem = str(exc)
        except (TimeoutError, OSError) as exc:
            problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        else:
            conn.close()
            return
    raise ServicesError(
        f"{where} does not answer ({problem}); start it with `monitor services up` "
        "or set MONITOR_KAFKA_BOOTSTRAP"
    )


async def check_redis(settings: Settings) -> None:
    """PING Redis with the settings' credentials and TLS; raises ServicesError with the reason in one line."""
    where = f"Redis at {redact_url(settings.redis_url)}"
    client = redis_client(settings, socket_connect_timeout=3, socket_timeout=3)
    try:
        await client.ping()
    except AuthenticationError as exc:
        raise ServicesError(
            f"{where} refused authentication ({exc}): check MONITOR_REDIS_USERNAME/PASSWORD "
            "(or the user:password in MONITOR_REDIS_URL)"
        ) from None
    except ResponseError as exc:
        if "NOAUTH" not in str(exc) and "WRONGPASS" not in str(exc):
            raise ServicesError(f"{where} refused the connection: {exc}") from None
        raise ServicesError(
            f"{where} refused authentication ({exc}): check MONITOR_REDIS_USERNAME/PASSWORD"
        ) from None
    except (RedisError, OSError) as exc:
        cause = _tls_cause(exc)
        if isinstance(cause, ssl.SSLCertVerificationError):
            trusted = settings.redis_ssl_ca or "the system's CAs"
            raise ServicesError(
                f"{where} presented a certificate that is not trusted ({cause.verify_message}; "
                f"trusted: {trusted}): check MONITOR_REDIS_SSL_CA"
            ) from None
        if cause is not None:
            raise ServicesError(
                f"the TLS handshake with {where} failed ({cause}): check that it listens with TLS "
                "(rediss://) and MONITOR_REDIS_SSL_CERTFILE/KEYFILE if it asks for a client certificate"
            ) from None
        hint = ""
        if settings.redis_url.startswith("redis://") and ("reset" in str(exc) or "closed" in str(exc)):
            hint = " (a server that speaks TLS does this to a plain client: use a rediss:// URL)"
        raise ServicesError(
            f"{where} does not answer ({exc}){hint}; start it with `monitor services up` "
            "or set MONITOR_REDIS_URL"
        ) from None
    finally:
        await client.aclose()


def _tls_cause(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error under a redis-py connection error, if that is what it is."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
