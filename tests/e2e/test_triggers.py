"""Platform triggers as users deploy them: API keys on, every function its own process on the
real MariaDB (behind a proxy the tests can cut) and Redis, the embedded broker, and the
bridge behaving as Knative (KafkaSource, OIDC sender tokens, its retries and dead-letter
sink) or as OpenFaaS (kafka-connector with async invocation and the queue-worker, the
connector's key in its gateway URL). Records are produced with plain kafka-python."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from psi_local.cloudevent import Event
from psi_local.stack import LocalStack
from shared_lib import topics
from shared_lib.adapters import sql_tables as t
from shared_lib.adapters.kafka import KafkaEventPublisher, Record, read_topic
from tests.conftest import (
    create_mysql_database,
    drop_mysql_database,
    require_broker_binary,
    stack_environ,
)
from tests.support import TcpProxy, http, wait_until

pytestmark = pytest.mark.e2e

ADMIN = "admin-key-" + uuid.uuid4().hex
WRITER = "writer-key-" + uuid.uuid4().hex
ORDERS = "orders-key-" + uuid.uuid4().hex
KEYS = f"{ADMIN}=admin;{WRITER}=stock:write,stock:read;{ORDERS}=orders:write"
CE_JSON = b"application/cloudevents+json"
TIMEOUT = 30.0


@dataclass
class Cluster:
    platform: str
    stack: LocalStack
    engine: sa.Engine
    proxy: TcpProxy

    @property
    def bootstrap(self) -> str:
        return self.stack.kafka_bootstrap

    def url(self, function: str, path: str = "") -> str:
        return self.stack.url(function) + path.lstrip("/")

    def call(
        self,
        method: str,
        function: str,
        path: str = "",
        body: Any = None,
        *,
        key: str = ADMIN,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> requests.Response:
        sent = {"Authorization": f"Bearer {key}", "Idempotency-Key": uuid.uuid4().hex}
        sent.update(headers or {})
        with http() as session:
            return session.request(
                method, self.url(function, path), json=body, data=data, headers=sent, timeout=30
            )

    def produce(self, topic: str, key: str, value: bytes, headers: list[Any] | None = None) -> None:
        with KafkaEventPublisher(self.bootstrap) as publisher:
            publisher.publish(topic, key, value, headers=headers)

    def on_hand(self, warehouse: str, sku: str) -> int | None:
        s = t.stock_levels
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(s.c.on_hand).where(s.c.warehouse == warehouse, s.c.sku == sku)
            ).scalar()
        return None if value is None else int(value)

    def movements(self, sku: str) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(t.movements)
                    .where(t.movements.c.sku == sku)
                ).scalar_one()
            )

    def letters(self, payload: bytes) -> list[Record]:
        """The dead letters of the record whose value was ``payload``, in either format:
        the function's JSON letter (OpenFaaS) or the dead-letter sink's record (Knative)."""
        digest = hashlib.sha256(payload).hexdigest()

        def mine(record: Record) -> bool:
            if self.platform == "knative":
                return record.value == payload
            try:
                return json.loads(record.value).get("payload_sha256") == digest
            except ValueError:
                return False

        records = read_topic(self.bootstrap, topics.DEAD_LETTER, until=lambda _: False, timeout=3)
        return [r for r in records if mine(r)]

    def product(self, sku: str) -> None:
        reply = self.call("PUT", "catalog", f"products/{sku}", {"name": sku})
        assert reply.status_code in (200, 201), reply.text


@pytest.fixture(scope="module", params=["knative", "openfaas"])
def cluster(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    mysql_server: str,
    redis_server: str,
) -> Iterator[Cluster]:
    require_broker_binary()
    platform: str = request.param
    data_dir: Path = tmp_path_factory.mktemp(f"triggers-{platform}")
    database_url = create_mysql_database(mysql_server)
    host_port = database_url.split("@", 1)[1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    prefix = f"psitrig{uuid.uuid4().hex[:8]}"
    with TcpProxy(host, int(port)) as proxy:
        proxied = database_url.replace(host_port, f"127.0.0.1:{proxy.port}")
        environ = stack_environ(
            proxied, redis_server, prefix, data_dir, PSI_API_KEYS=KEYS, PSI_DB_TIMEOUT_SECONDS="2"
        )
        options = (
            {"retry": 8, "backoff_delay": 0.1}
            if platform == "knative"
            else {"initial_wait": 0.1, "max_wait": 1.0, "max_attempts": 60}
        )
        stack = LocalStack(
            data_dir=data_dir,
            base_port=0,
            environ=environ,
            platform=platform,
            delivery_options=options,
        )
        engine = sa.create_engine(database_url)
        try:
            stack.start()
            env = Cluster(platform, stack, engine, proxy)
            reply = env.call("PUT", "catalog", "warehouses/MAIN", {"name": "main"})
            assert reply.status_code in (200, 201), reply.text
            yield env
        finally:
            stack.stop()
            engine.dispose()
            drop_mysql_database(mysql_server, database_url)


def receipt(sku: str, qty: int, **extra: Any) -> dict[str, Any]:
    return {"warehouse": "MAIN", "lines": [{"sku": sku, "qty": qty}], **extra}


def structured(event_id: str, source: str, data: dict[str, Any]) -> bytes:
    event = {
        "specversion": "1.0",
        "id": event_id,
        "source": source,
        "type": topics.STOCK_IN_REQUESTED,
        "datacontenttype": "application/json",
        "data": data,
    }
    return json.dumps(event).encode()


def test_plain_records_land_once_with_keys_on(cluster: Cluster) -> None:
    sku = f"TRIG-{uuid.uuid4().hex[:8]}"
    cluster.product(sku)
    cluster.produce(topics.STOCK_IN_REQUESTED, sku, json.dumps(receipt(sku, 10)).encode())
    wait_until(lambda: cluster.on_hand("MAIN", sku) == 10, timeout=TIMEOUT, what="the receipt")
    issue = receipt(sku, 4, reason="counter sale")
    cluster.produce(topics.STOCK_OUT_REQUESTED, sku, json.dumps(issue).encode())
    wait_until(lambda: cluster.on_hand("MAIN", sku) == 6, timeout=TIMEOUT, what="the issue")
    assert cluster.movements(sku) == 2
    assert cluster.stack.bridge.stats.dead_lettered == 0


def test_a_cloudevent_sent_three_times_has_one_effect(cluster: Cluster) -> None:
    sku = f"TRIG-{uuid.uuid4().hex[:8]}"
    cluster.product(sku)
    value = structured(f"evt-{uuid.uuid4()}", "/erp/purchasing", receipt(sku, 7))
    for _ in range(3):
        cluster.produce(topics.STOCK_IN_REQUESTED, sku, value, [("content-type", CE_JSON)])
    marker = receipt(sku, 1)  # after the copies on the same partition: they are all done then
    cluster.produce(topics.STOCK_IN_REQUESTED, sku, json.dumps(marker).encode())
    wait_until(lambda: cluster.movements(sku) == 2, timeout=TIMEOUT, what="the copies")
    assert cluster.on_hand("MAIN", sku) == 8


def test_one_id_from_two_sources_is_two_events(cluster: Cluster) -> None:
    sku = f"TRIG-{uuid.uuid4().hex[:8]}"
    cluster.product(sku)
    event_id = f"evt-{uuid.uuid4()}"
    for source in ("/erp/purchasing", "/erp/returns"):
        value = structured(event_id, source, receipt(sku, 5))
        cluster.produce(topics.STOCK_IN_REQUESTED, sku, value, [("content-type", CE_JSON)])
    wait_until(lambda: cluster.on_hand("MAIN", sku) == 10, timeout=TIMEOUT, what="both events")
    assert cluster.movements(sku) == 2


def test_refusals_and_poison_are_dead_lettered_once_and_the_partition_moves_on(
    cluster: Cluster,
) -> None:
    sku = f"TRIG-{uuid.uuid4().hex[:8]}"
    cluster.product(sku)
    retries = cluster.stack.bridge.stats.retries
    short = json.dumps(receipt(sku, 999, reason="scrap", reference=uuid.uuid4().hex)).encode()
    unknown = json.dumps(receipt("NO-SUCH-" + uuid.uuid4().hex[:6], 1)).encode()
    nested = b"[" * 5000 + b"]" * 5000
    huge = b"\xff" + uuid.uuid4().bytes + b"\x80" * 800_000
    for topic, value in (
        (topics.STOCK_OUT_REQUESTED, short),  # 409 insufficient_stock: a business refusal
        (topics.STOCK_IN_REQUESTED, unknown),  # 404 unknown sku
        (topics.STOCK_IN_REQUESTED, nested),
        (topics.STOCK_IN_REQUESTED, huge),
        (topics.STOCK_IN_REQUESTED, json.dumps(receipt(sku, 3)).encode()),
    ):
        cluster.produce(topic, sku, value)
    wait_until(lambda: cluster.on_hand("MAIN", sku) == 3, timeout=TIMEOUT, what="the good one")
    for value in (short, unknown, nested, huge):
        wait_until(lambda v=value: len(cluster.letters(v)) >= 1, timeout=TIMEOUT, what="letter")
        letters = cluster.letters(value)
        assert len(letters) == 1, value[:40]
        assert len(letters[0].value) < 1_000_000  # it fits a Kafka record
    assert cluster.stack.bridge.stats.retries == retries  # no retry storm
    (refusal,) = cluster.letters(short)
    if cluster.platform == "knative":
        codes = dict(refusal.headers)
        assert codes["ce_knativeerrorcode"] == b"422"  # 409 would be retried by Knative
        assert b"insufficient_stock" in base64.b64decode(codes["ce_knativeerrordata"])
    else:
        letter = json.loads(refusal.value)
        assert letter["topic"] == topics.STOCK_OUT_REQUESTED
        assert "insufficient_stock" in letter["reason"]
        (big,) = cluster.letters(huge)
        kept = json.loads(big.value)
        assert kept["truncated"] is True and kept["payload_bytes"] == len(huge)
        assert kept["payload_ref"].startswith(("file:", "s3:"))


def test_a_delivery_during_a_database_outage_lands_once_after_it(cluster: Cluster) -> None:
    sku = f"TRIG-{uuid.uuid4().hex[:8]}"
    cluster.product(sku)
    cluster.proxy.cut()
    try:
        cluster.produce(topics.STOCK_IN_REQUESTED, sku, json.dumps(receipt(sku, 9)).encode())
        before = cluster.stack.bridge.stats.retries
        wait_until(
            lambda: cluster.stack.bridge.stats.retries >= before + 2,
            timeout=TIMEOUT,
            what="the platform to retry while the database is down",
        )
    finally:
        cluster.proxy.restore()
    wait_until(lambda: cluster.on_hand("MAIN", sku) == 9, timeout=60, what="the receipt")
    assert cluster.movements(sku) == 1
    assert cluster.letters(json.dumps(receipt(sku, 9)).encode()) == []


def test_the_nightly_reconcile_arrives_as_the_platform_sends_it(cluster: Cluster) -> None:
    nightly = f"nightly-{datetime.now(UTC).date().isoformat()}"
    if cluster.platform == "knative":
        # PingSource -> KafkaSink (binary) -> psi.reconcile.requested -> KafkaSource
        ping = Event(
            {
                "specversion": "1.0",
                "id": str(uuid.uuid4()),
                "source": "/apis/v1/namespaces/psi/pingsources/nightly-reconcile",
                "type": "dev.knative.sources.ping",
                "datacontenttype": "application/json",
            },
            b'{"repair": true}',
        )
        value, headers = ping.kafka()
        cluster.produce(topics.RECONCILE_REQUESTED, "", value, headers)
    else:
        # cron-connector: POST, no body, X-Topic cron-function, the connector's credential
        credential = f"cron-connector:{cluster.stack.connector_key}".encode()
        reply = cluster.call(
            "POST",
            "reconcile",
            headers={
                "X-Topic": "cron-function",
                "X-Connector": "cron-connector",
                "Authorization": "Basic " + base64.b64encode(credential).decode(),
                "Idempotency-Key": "",
            },
            data=b"",
        )
        assert reply.status_code == 200, reply.text
    runs = t.reconciliation_runs
    query = sa.select(runs.c.status).where(runs.c.run_key == nightly)

    def status() -> str | None:
        with cluster.engine.connect() as conn:
            return conn.execute(query).scalar()

    wait_until(lambda: status() == "finished", timeout=TIMEOUT, what="the nightly run")


@pytest.mark.parametrize(
    "shape",
    [
        {"X-Topic": topics.STOCK_IN_REQUESTED, "X-Kafka-Partition": "0", "X-Kafka-Offset": "1"},
        {"ce-specversion": "1.0", "ce-id": "x", "ce-source": "/forged", "ce-type": "t"},
    ],
    ids=["connector", "cloudevent"],
)
@pytest.mark.parametrize("key", [None, WRITER, ORDERS], ids=["no-key", "writer", "orders"])
def test_forged_deliveries_are_refused_and_change_nothing(
    cluster: Cluster, shape: dict[str, str], key: str | None
) -> None:
    sku = f"TRIG-{uuid.uuid4().hex[:8]}"
    cluster.product(sku)
    body = json.dumps(receipt(sku, 999)).encode()
    headers = {**shape, "Content-Type": "application/json"}
    if key is None:
        headers["Authorization"] = ""
    reply = cluster.call("POST", "stock_in", key=key or "", headers=headers, data=body)
    assert reply.status_code in (401, 403), reply.text
    # nor through another function, a path nobody serves, or a method nobody takes
    for function, method, path in (
        ("create_order", "POST", ""),
        ("stock_in", "POST", "nowhere"),
        ("stock_in", "DELETE", ""),
    ):
        other = cluster.call(method, function, path, key=key or "", headers=headers, data=body)
        assert other.status_code >= 400
    assert cluster.on_hand("MAIN", sku) is None
    assert cluster.letters(body) == []
