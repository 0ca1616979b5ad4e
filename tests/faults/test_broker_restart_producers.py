"""The embedded broker forgets producer ids across a restart (memory storage) and hands them
out again from 1. An idempotent producer created before the restart then shares its id with
one created after it: once the newer one has sent more records to a partition, the broker
acks the older producer's records there as duplicates and drops them. The outbox marks such
events published although no consumer ever sees them.

Only the dev/test broker is affected (Apache Kafka keeps producer ids), but it silently breaks
the stack's at-least-once delivery after ``EmbeddedBroker.restart()``; the fault tests work
around it by restarting the functions with the broker (``FaultEnv.restart_broker``). Strict
xfail: once a fix keeps those records, it passes unexpectedly and asks for this mark to go.
"""

from __future__ import annotations

import json

import pytest

from psi_local.broker import EmbeddedBroker
from shared_lib.adapters.kafka import KafkaEventPublisher, read_topic

TOPIC = "psi.test.producer-ids"


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="dev-stack bug (reported): after EmbeddedBroker.restart() a producer created "
    "before it may reuse a producer id handed to a newer producer; its acked records vanish",
)
def test_a_producer_from_before_a_broker_restart_loses_no_record(
    broker: EmbeddedBroker,
) -> None:
    broker.create_topics([TOPIC], partitions=1)
    old = KafkaEventPublisher(broker.bootstrap)
    new = KafkaEventPublisher(broker.bootstrap)
    try:
        old.publish(TOPIC, "k", json.dumps({"from": "old", "n": 0}).encode())
        broker.stop(graceful=False)
        broker.restart()
        for n in range(5):  # the new producer gets the old one's id and moves its sequence on
            new.publish(TOPIC, "k", json.dumps({"from": "new", "n": n}).encode())
        for n in range(1, 4):  # acked...
            old.publish(TOPIC, "k", json.dumps({"from": "old", "n": n}).encode())
        records = read_topic(broker.bootstrap, TOPIC, until=lambda recs: len(recs) >= 8, timeout=5)
    finally:
        old.close()
        new.close()
    seen = [json.loads(r.value) for r in records]
    assert [d["n"] for d in seen if d["from"] == "old"] == [1, 2, 3], seen  # ...but kept?


def test_without_idempotence_a_producer_from_before_a_restart_loses_nothing(
    broker: EmbeddedBroker,
) -> None:
    """What the local stack runs with (PSI_KAFKA_IDEMPOTENCE=false for the embedded broker)."""
    topic = TOPIC + ".plain"
    broker.create_topics([topic], partitions=1)
    old = KafkaEventPublisher(broker.bootstrap, enable_idempotence=False)
    new = KafkaEventPublisher(broker.bootstrap, enable_idempotence=False)
    try:
        old.publish(topic, "k", json.dumps({"from": "old", "n": 0}).encode())
        broker.stop(graceful=False)
        broker.restart()
        for n in range(5):
            new.publish(topic, "k", json.dumps({"from": "new", "n": n}).encode())
        for n in range(1, 4):
            old.publish(topic, "k", json.dumps({"from": "old", "n": n}).encode())
        records = read_topic(broker.bootstrap, topic, until=lambda recs: len(recs) >= 8, timeout=10)
    finally:
        old.close()
        new.close()
    seen = [json.loads(r.value) for r in records]
    assert [d["n"] for d in seen if d["from"] == "old"] == [1, 2, 3], seen
