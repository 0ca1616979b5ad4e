"""psi reconcile / outbox status / outbox redrive / dlq replay on SQLite and MariaDB, the real
Redis and the embedded Kafka-compatible broker."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from psi_local.broker import EmbeddedBroker, free_port
from shared_lib import cli, topics
from shared_lib.adapters import sql_tables as t
from shared_lib.adapters.kafka import KafkaEventPublisher, Record, read_topic
from shared_lib.adapters.redis_gate import RedisGate
from shared_lib.adapters.sql import SqlTransactions
from shared_lib.domain import dead_letters
from shared_lib.domain.model import Line, ReceiveStock, RequestMeta, utcnow
from shared_lib.services import Deps, receive_stock
from shared_lib.services.cache import rebuild_all
from tests.conftest import seed_catalog

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:read_text is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:open_text is deprecated:DeprecationWarning"),
]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str) -> str:
    """The CLI's settings: this test's database, no Kafka, no Redis unless a test adds it."""
    for name in list(os.environ):
        if name.startswith("PSI_") and not name.startswith("PSI_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PSI_DATABASE_URL", database_url)
    monkeypatch.setenv("PSI_REDIS_URL", "disabled")
    monkeypatch.setenv("PSI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PSI_SECRETS_DIR", str(tmp_path / "no-secrets"))
    return database_url


def psi(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def receive(deps: Deps, warehouse: str, key: str, **qty: int) -> None:
    lines = tuple(Line(s, q) for s, q in sorted(qty.items()))
    receive_stock(deps, ReceiveStock(warehouse, lines), RequestMeta(key, "test"))


def gate_level(gate: RedisGate, warehouse: str, sku: str) -> tuple[int, int] | None:
    cached = gate.read(warehouse, [sku]).get(sku)
    return None if cached is None else (cached.on_hand, cached.reserved)


def header(record: Record, name: str) -> bytes | None:
    return next((v for k, v in record.headers if k == name), None)


# ---- psi reconcile ----------------------------------------------------------------------


def test_reconcile_reports_then_repairs_seeded_drift_with_progress(
    env: str,
    monkeypatch: pytest.MonkeyPatch,
    engine: sa.Engine,
    tx: SqlTransactions,
    gate: RedisGate,
    redis_client: redis.Redis,
    redis_server: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PSI_REDIS_URL", redis_server)
    monkeypatch.setenv("PSI_REDIS_PREFIX", gate.prefix)
    seed_catalog(engine, {"A": 0, "B": 0, "C": 0}, ("W1",))
    rebuild_all(tx, gate)
    receive(Deps(tx=tx, gate=gate), "W1", "in-1", A=10, B=5, C=2)
    redis_client.hset(gate.level_key("W1", "A"), "oh", 99)
    redis_client.delete(gate.level_key("W1", "B"))

    code, out, err = psi(capsys, "reconcile", "--no-repair", "--run-key", "look-only")
    assert code == 0, err
    report = json.loads(out)
    assert (report["run_key"], report["checked"]) == ("look-only", 3)
    assert (report["drift_found"], report["drift_repaired"]) == (2, 0)
    assert "reconcile look-only [" in err and "100% 3/3" in err
    assert "2 drift rows not repaired" in err
    assert gate_level(gate, "W1", "A") == (99, 0) and gate_level(gate, "W1", "B") is None

    code, out, err = psi(capsys, "reconcile", "--run-key", "repair-1")
    assert code == 0, err
    repaired = json.loads(out)
    assert (repaired["drift_found"], repaired["drift_repaired"]) == (2, 2)
    assert "  0% 0/3" in err and "100% 3/3" in err and "not repaired" not in err
    assert gate_level(gate, "W1", "A") == (10, 0) and gate_level(gate, "W1", "B") == (5, 0)
    assert Path(repaired["report_uri"].removeprefix("file://")).is_file()

    # the same run key answers the first run's result without scanning again
    code, out, err = psi(capsys, "reconcile", "--run-key", "repair-1")
    assert (code, json.loads(out), err) == (0, repaired, "")


def test_reconcile_with_an_unreachable_database_is_one_line(
    env: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PSI_DATABASE_URL", f"mysql+pymysql://psi:pw@127.0.0.1:{free_port()}/psi")
    code, out, err = psi(capsys, "reconcile")
    assert (code, out) == (1, "")
    assert err.splitlines()[-1].startswith("psi: database unreachable: (2003")


# ---- psi outbox status / redrive ---------------------------------------------------------


def pending_events(engine: sa.Engine, tx: SqlTransactions) -> dict[str, str]:
    """Two committed stock changes (no Kafka configured: they wait in the outbox); the first
    row failed once and backs off for an hour. Returns event id -> payload."""
    seed_catalog(engine, {"A": 0, "B": 0}, ("W1",))
    receive(Deps(tx=tx, source="/psi/stock-in"), "W1", f"in-{uuid.uuid4().hex}", A=3, B=1)
    o = t.outbox
    with engine.begin() as conn:
        rows = conn.execute(sa.select(o.c.id, o.c.event_id, o.c.payload).order_by(o.c.id)).all()
        conn.execute(
            sa.update(o)
            .where(o.c.id == rows[0].id)
            .values(
                attempts=1,
                next_attempt_at=utcnow() + timedelta(hours=1),
                last_error="PublishError: broker said no",
            )
        )
    return {row.event_id: row.payload for row in rows}


def test_outbox_status_and_redrive_publish_pending_rows_now(
    env: str,
    monkeypatch: pytest.MonkeyPatch,
    engine: sa.Engine,
    tx: SqlTransactions,
    broker: EmbeddedBroker,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ours = pending_events(engine, tx)
    assert len(ours) == 2

    code, out, err = psi(capsys, "outbox", "status")
    assert (code, err) == (0, "")
    assert "pending      2" in out and f"  {topics.STOCK_CHANGED:<28} 2" in out
    assert "failing      1" in out and "PublishError: broker said no" in out
    assert "kafka        not configured" in out

    code, out, err = psi(capsys, "outbox", "redrive")
    assert (code, out) == (2, "")
    assert err.startswith("psi: configuration error: PSI_KAFKA_BOOTSTRAP is not set")

    monkeypatch.setenv("PSI_KAFKA_BOOTSTRAP", broker.bootstrap)
    code, out, err = psi(capsys, "outbox", "redrive")
    assert code == 0, err
    assert "published    2" in out and "pending      0" in out

    def mine(records: list[Record]) -> list[Record]:
        return [r for r in records if (header(r, "ce_id") or b"").decode() in ours]

    got = mine(
        read_topic(
            broker.bootstrap, topics.STOCK_CHANGED, until=lambda rs: len(mine(rs)) >= 2, timeout=15
        )
    )
    assert {header(r, "ce_id").decode(): r.value.decode() for r in got} == ours  # type: ignore[union-attr]
    code, out, _ = psi(capsys, "outbox", "status")
    assert code == 0 and "pending      0" in out and "lag_seconds  0.0" in out


def test_outbox_redrive_with_kafka_down_fails_and_keeps_the_rows(
    env: str,
    monkeypatch: pytest.MonkeyPatch,
    engine: sa.Engine,
    tx: SqlTransactions,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pending_events(engine, tx)
    monkeypatch.setenv("PSI_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")

    code, out, err = psi(capsys, "outbox", "redrive")

    assert code == 1
    assert "published    0" in out and "pending      2" in out
    assert err.splitlines()[-1].startswith("psi: 2 events still pending: publishing failed:")
    with engine.connect() as conn:
        left = conn.execute(sa.select(t.outbox.c.published_at, t.outbox.c.attempts)).all()
    assert [row.published_at for row in left] == [None, None]
    assert max(row.attempts for row in left) == 2  # the row that was backing off was retried


# ---- psi dlq replay ----------------------------------------------------------------------


@pytest.fixture
def dlq_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, broker: EmbeddedBroker) -> str:
    for name in list(os.environ):
        if name.startswith("PSI_") and not name.startswith("PSI_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PSI_KAFKA_BOOTSTRAP", broker.bootstrap)
    monkeypatch.setenv("PSI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PSI_SECRETS_DIR", str(tmp_path / "no-secrets"))
    return broker.bootstrap


@pytest.fixture
def dead_letter_publisher(dlq_env: str) -> Iterator[KafkaEventPublisher]:
    publisher = KafkaEventPublisher(dlq_env)
    yield publisher
    publisher.close(timeout=1.0)


def park(publisher: KafkaEventPublisher, topic: str, key: str | None, payload: bytes) -> None:
    """Put a dead letter on psi.dead-letter as a function does when it refuses a delivery."""
    letter = dead_letters.dead_letter(
        topic=topic,
        partition=0,
        offset=7,
        key=key,
        payload=payload,
        status=422,
        reason='{"error":"invalid_request"}',
        function="stock-in",
    )
    publisher.publish(topics.DEAD_LETTER, key or "", json.dumps(letter).encode())


def test_dlq_replay_republishes_letters_to_their_original_topic(
    dlq_env: str,
    broker: EmbeddedBroker,
    dead_letter_publisher: KafkaEventPublisher,
    capsys: pytest.CaptureFixture[str],
) -> None:
    origin = f"psi.test.replay-{uuid.uuid4().hex[:8]}"
    other = f"psi.test.other-{uuid.uuid4().hex[:8]}"
    broker.create_topics([topics.DEAD_LETTER, origin, other], partitions=1)
    event = {"specversion": "1.0", "id": "evt-replay-1", "source": "/t", "type": "t", "data": {}}
    cloud_event = json.dumps(event).encode()
    raw = b"\xff\x00not utf-8"
    park(dead_letter_publisher, origin, "SKU-1", cloud_event)
    park(dead_letter_publisher, origin, None, raw)
    park(dead_letter_publisher, other, "SKU-2", b"{}")
    park(dead_letter_publisher, other, "SKU-3", b"{}")
    dead_letter_publisher.publish(topics.DEAD_LETTER, "", b"not a dead letter")
    # what a Knative KafkaSource's deadLetterSink writes (binary mode: attributes in headers)
    knative = [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"partition:0/offset:12"),
        ("ce_source", f"/apis/v1/namespaces/psi/kafkasources/psi-stock-in#{origin}".encode()),
        ("ce_type", b"dev.knative.kafka.event"),
        ("ce_knativeerrorcode", b"422"),
    ]
    dead_letter_publisher.publish(topics.DEAD_LETTER, "SKU-9", b'{"lines":[]}', knative)

    code, out, err = psi(capsys, "dlq", "replay", "--topic-filter", origin, "--dry-run")
    assert code == 0, err
    assert out.count("would replay  ") == 3 and "event=evt-replay-1" in out
    assert "event=partition:0/offset:12" in out and "(422)" in out
    assert "not JSON" in err

    code, out, err = psi(capsys, "dlq", "replay", "--topic-filter", origin)
    assert code == 0, err
    assert out.count(f"-> {origin}") == 3 and "key=SKU-1" in out

    records = read_topic(broker.bootstrap, origin, until=lambda rs: len(rs) >= 3, timeout=15)
    assert [(r.key, r.value) for r in records] == [
        (b"SKU-1", cloud_event),
        (b"", raw),
        (b"SKU-9", b'{"lines":[]}'),
    ]
    assert all(header(r, "psi_replayed_from").startswith(b"psi.dead-letter:") for r in records)  # type: ignore[union-attr]
    # the CloudEvent attributes go back with it (same id: a duplicate has one effect)
    assert [(k, v) for k, v in records[2].headers if k.startswith("ce_")] == knative[:4]
    # the dry run published nothing: the topic holds exactly the replayed messages
    assert cli.dlq.topic_end_offsets(broker.bootstrap, origin, 10) == {0: 3}

    code, out, err = psi(
        capsys, "dlq", "replay", "--topic-filter", "psi.test.other-*", "--limit", "1"
    )
    assert code == 0, err
    assert out.count("replayed  ") == 1 and f"-> {other}  key=SKU-2" in out
    replayed = read_topic(broker.bootstrap, other, until=lambda rs: len(rs) >= 1, timeout=15)
    assert [(r.key, r.value) for r in replayed] == [(b"SKU-2", b"{}")]


def test_dlq_replay_needs_kafka(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in list(os.environ):
        if name.startswith("PSI_") and not name.startswith("PSI_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PSI_DATA_DIR", str(tmp_path))
    code, out, err = psi(capsys, "dlq", "replay")
    assert (code, out) == (2, "")
    assert err == (
        "psi: configuration error: PSI_KAFKA_BOOTSTRAP is not set and no local stack runs"
        f" on {tmp_path} (start one with `psi dev`, or set PSI_KAFKA_BOOTSTRAP to the one the"
        " functions use)\n"
    )


def test_dlq_replay_fetches_a_cut_payload_and_finds_the_topic_of_a_forwarded_event(
    dlq_env: str,
    broker: EmbeddedBroker,
    dead_letter_publisher: KafkaEventPublisher,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from shared_lib.adapters.reports import reports_from_settings
    from shared_lib.config import load_settings

    broker.create_topics([topics.DEAD_LETTER, topics.STOCK_OUT_REQUESTED], partitions=1)
    big = b'{"pad": "' + b"x" * (dead_letters.MAX_EXCERPT_BYTES * 3) + b'"}'
    ref = reports_from_settings(load_settings()).keep(f"dead-letters/t/{uuid.uuid4()}", big)
    marker = uuid.uuid4().hex
    common = {"partition": 0, "offset": 3, "status": 422, "reason": "r", "function": "stock-out"}
    cut = dead_letters.dead_letter(
        topic=topics.STOCK_OUT_REQUESTED, key=marker, payload=big, payload_ref=ref, **common
    )
    assert cut["truncated"] and len(cut["payload"]) == dead_letters.MAX_EXCERPT_BYTES
    lost = dead_letters.dead_letter(
        topic=topics.STOCK_OUT_REQUESTED, key=marker, payload=big, **common
    )
    for letter in (cut, lost):
        dead_letter_publisher.publish(topics.DEAD_LETTER, marker, json.dumps(letter).encode())
    # a forwarded CloudEvent's letter names no topic: the function it was sent to does
    forwarded = [
        ("ce_specversion", b"1.0"),
        ("ce_id", marker.encode()),
        ("ce_source", b"/erp"),
        ("ce_type", b"psi.stock-out.requested"),
        ("ce_knativeerrordest", b"http://stock-out.psi.svc.cluster.local"),
        ("ce_knativeerrorcode", b"422"),
    ]
    dead_letter_publisher.publish(topics.DEAD_LETTER, marker, b'{"n": 1}', forwarded)

    code, out, err = psi(capsys, "dlq", "replay", "--topic-filter", topics.STOCK_OUT_REQUESTED)
    assert code == 0, err
    assert out.count(f"-> {topics.STOCK_OUT_REQUESTED}  key={marker}") == 2
    assert "payload cut to an excerpt and kept nowhere" in err
    records = read_topic(
        broker.bootstrap,
        topics.STOCK_OUT_REQUESTED,
        until=lambda rs: sum(r.key == marker.encode() for r in rs) >= 2,
        timeout=15,
    )
    mine = [r for r in records if r.key == marker.encode()]
    assert [r.value for r in mine] == [big, b'{"n": 1}']
    assert header(mine[1], "ce_id") == marker.encode()
