"""Publishes control messages and incident events on their Kafka topics (the `Publisher` protocol)."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaProducer

from monitor.events import ControlMessage, IncidentEvent, encode


class KafkaPublisher:
    """An idempotent aiokafka producer that waits for every acknowledgement."""

    def __init__(
        self,
        bootstrap: str,
        *,
        control_topic: str,
        incidents_topic: str,
        kafka_options: dict[str, Any] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        # TLS / SASL arguments of the producer (monitor.security.kafka_client_options).
        self.kafka_options = dict(kafka_options or {})
        self.control_topic = control_topic
        self.incidents_topic = incidents_topic
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        """Connect to the broker (the producer binds to the running loop, so it is made here)."""
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=0,
            **self.kafka_options,
        )
        await self._producer.start()

    async def stop(self) -> None:
        """Flush and disconnect."""
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    @property
    def producer(self) -> AIOKafkaProducer:
        """The started producer."""
        if self._producer is None:
            raise RuntimeError("KafkaPublisher.start() was not awaited")
        return self._producer

    async def control(self, message: ControlMessage) -> None:
        """Publish on the compacted control topic, key = model_id."""
        await self.producer.send_and_wait(self.control_topic, encode(message), key=message.model_id.encode())

    async def incident(self, event: IncidentEvent) -> None:
        """Publish on the incidents topic, key = incident id."""
        await self.producer.send_and_wait(self.incidents_topic, encode(event), key=event.id.encode())
