"""The Kafka record the bridge tests start from: ``record()`` is a request on TOPIC (partition
2, offset 41, key sku-A, TIMESTAMP); SOURCE is the CloudEvent source its KafkaSource sets."""

from __future__ import annotations

from shared_lib.adapters.kafka import Headers, Record

TOPIC = "psi.stock-in.requested"
SOURCE = f"/apis/v1/namespaces/psi/kafkasources/stock-in#{TOPIC}"
TIMESTAMP = 1_700_000_000_123  # 2023-11-14T22:13:20.123Z


def record(
    value: bytes = b'{"sku": "A", "qty": 1}',
    *,
    key: bytes | None = b"sku-A",
    headers: Headers | None = None,
    partition: int = 2,
    offset: int = 41,
    timestamp: int | None = TIMESTAMP,
    topic: str = TOPIC,
) -> Record:
    return Record(topic, partition, offset, key, value, list(headers or []), timestamp)
