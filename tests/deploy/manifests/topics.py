"""Kafka topics, sources and sinks, the bootstrap servers, the nightly run."""

from __future__ import annotations

from pathlib import Path

from shared_lib import topics
from shared_lib.http.delivery import CRON_TOPIC
from tests.deploy.manifests.build import kustomization
from tests.deploy.manifests.loading import (
    DATA_DIR,
    KNATIVE_CONFIGMAP,
    KNATIVE_DIR,
    NIGHTLY_FUNCTION,
    NIGHTLY_SCHEDULE,
    NIGHTLY_TIMEZONE,
    STACK_FILE,
    Document,
    Problem,
    code_topics,
    dashed,
    handler_dir,
    kafka_sinks,
    load_documents,
    manifests,
    of_kind,
    sink_ref,
    split_topics,
    stack_functions,
)


def check_stack_topics(root: Path) -> list[Problem]:
    """kafka-connector topic annotations equal shared_lib.topics.CONSUMED_BY."""
    problems = []
    triggered: dict[str, set[str]] = {}
    for name, spec in stack_functions(root).items():
        directory = handler_dir(str(spec.get("handler", "")))
        annotations = spec.get("annotations") or {}
        for topic in split_topics(annotations.get("topic")):
            if topic == CRON_TOPIC:
                continue
            expected = topics.CONSUMED_BY.get(directory or "")
            if topic != expected:
                problems.append(
                    Problem(
                        STACK_FILE,
                        f"{name}: topic annotation {topic!r} is not the input topic of "
                        f"functions/{directory} (CONSUMED_BY says {expected!r})",
                    )
                )
            triggered.setdefault(topic, set()).add(directory or "")
    for directory, topic in topics.CONSUMED_BY.items():
        if directory not in triggered.get(topic, set()):
            problems.append(
                Problem(
                    STACK_FILE, f"no function is triggered by {topic} (CONSUMED_BY[{directory!r}])"
                )
            )
    return problems


def check_kafka_sources(root: Path) -> list[Problem]:
    """One KafkaSource per CONSUMED_BY entry, sinking into that function, dead letters kept."""
    problems = []
    docs = manifests(root)
    sinks = kafka_sinks(root)
    consumed: dict[str, list[str]] = {}
    for doc in of_kind(docs, "sources.knative.dev/v1", "KafkaSource"):
        spec = doc.body.get("spec", {})
        target = sink_ref(doc)
        directory = str(target.get("name", "")).replace("-", "_")
        source_topics = list(spec.get("topics") or [])
        if target.get("kind") != "Service" or directory not in topics.CONSUMED_BY:
            problems.append(
                Problem(doc.file, f"{doc.label}: sink {target.get('name')!r} consumes no topic")
            )
            continue
        expected = topics.CONSUMED_BY[directory]
        if source_topics != [expected]:
            problems.append(
                Problem(
                    doc.file,
                    f"{doc.label}: topics {source_topics} but functions/{directory} consumes "
                    f"[{expected!r}]",
                )
            )
        consumed.setdefault(directory, []).append(doc.name)
        dead = ((spec.get("delivery") or {}).get("deadLetterSink") or {}).get("ref") or {}
        if sinks.get(str(dead.get("name"))) != topics.DEAD_LETTER:
            problems.append(
                Problem(doc.file, f"{doc.label}: dead letters must go to {topics.DEAD_LETTER}")
            )
    for directory, topic in topics.CONSUMED_BY.items():
        if len(consumed.get(directory, [])) != 1:
            problems.append(
                Problem(
                    KNATIVE_DIR,
                    f"{topic} needs exactly one KafkaSource into {dashed(directory)}, "
                    f"found {len(consumed.get(directory, []))}",
                )
            )
    for doc in of_kind(docs, "eventing.knative.dev/v1alpha1", "KafkaSink"):
        topic = doc.body.get("spec", {}).get("topic")
        if topic not in code_topics():
            problems.append(Problem(doc.file, f"{doc.label}: topic {topic!r} is not in topics.py"))
    return problems


def check_strimzi_topics(root: Path) -> list[Problem]:
    """The KafkaTopics are exactly the topics of shared_lib/topics.py, safely replicated."""
    problems = []
    docs = manifests(root)
    clusters = {d.name for d in of_kind(docs, "kafka.strimzi.io/v1", "Kafka")}
    declared: dict[str, Document] = {}
    for doc in of_kind(docs, "kafka.strimzi.io/v1", "KafkaTopic"):
        spec = doc.body.get("spec", {})
        topic = spec.get("topicName") or doc.name
        declared[topic] = doc
        if topic not in code_topics():
            problems.append(Problem(doc.file, f"KafkaTopic {topic} is not in shared_lib/topics.py"))
        cluster = ((doc.body.get("metadata") or {}).get("labels") or {}).get("strimzi.io/cluster")
        if cluster not in clusters:
            problems.append(Problem(doc.file, f"KafkaTopic {topic}: no Kafka cluster {cluster!r}"))
        replicas = int(spec.get("replicas", 0))
        min_isr = int((spec.get("config") or {}).get("min.insync.replicas", 1))
        if replicas < 3 or not 2 <= min_isr < replicas:
            problems.append(
                Problem(
                    doc.file,
                    f"KafkaTopic {topic}: needs replicas >= 3 and 2 <= min.insync.replicas < "
                    f"replicas (has {replicas} and {min_isr})",
                )
            )
    for topic in sorted(code_topics() - declared.keys()):
        problems.append(
            Problem(DATA_DIR, f"topic {topic} from shared_lib/topics.py has no KafkaTopic")
        )
    return problems


def expected_bootstrap(root: Path) -> str | None:
    """<cluster>-kafka-bootstrap.<namespace>.svc.cluster.local:<plain port> from infra/data."""
    kafkas = of_kind(load_documents(root, DATA_DIR), "kafka.strimzi.io/v1", "Kafka")
    namespace = (kustomization(root, DATA_DIR) or {}).get("namespace")
    if len(kafkas) != 1 or not namespace:
        return None
    listeners = kafkas[0].body.get("spec", {}).get("kafka", {}).get("listeners") or []
    plain = [x["port"] for x in listeners if x.get("type") == "internal" and not x.get("tls")]
    if not plain:
        return None
    return f"{kafkas[0].name}-kafka-bootstrap.{namespace}.svc.cluster.local:{plain[0]}"


def check_bootstrap(root: Path) -> list[Problem]:
    """Every Kafka client setting names the Strimzi cluster's plain bootstrap address."""
    expected = expected_bootstrap(root)
    if expected is None:
        return [Problem(DATA_DIR, "cannot find one Strimzi Kafka with a plain internal listener")]
    problems = []
    found: list[tuple[str, str, str]] = []
    for name, spec in stack_functions(root).items():
        value = (spec.get("environment") or {}).get("PSI_KAFKA_BOOTSTRAP")
        found.append((STACK_FILE, f"{name}: PSI_KAFKA_BOOTSTRAP", str(value)))
    for doc in manifests(root):
        if doc.kind == "ConfigMap" and doc.name == KNATIVE_CONFIGMAP:
            value = (doc.body.get("data") or {}).get("PSI_KAFKA_BOOTSTRAP")
            found.append((doc.file, "PSI_KAFKA_BOOTSTRAP", str(value)))
        if doc.kind in ("KafkaSource", "KafkaSink"):
            for server in doc.body.get("spec", {}).get("bootstrapServers") or []:
                found.append((doc.file, f"{doc.label}: bootstrapServers", str(server)))
    for file, what, value in found:
        if value != expected:
            problems.append(Problem(file, f"{what} is {value!r}, expected {expected!r}"))
    return problems


def check_nightly(root: Path) -> list[Problem]:
    """02:00 every night a reconcile runs: cron-connector on OpenFaaS, PingSource on Knative."""
    problems = []
    crons = [
        (name, spec)
        for name, spec in stack_functions(root).items()
        if CRON_TOPIC in split_topics((spec.get("annotations") or {}).get("topic"))
    ]
    if len(crons) != 1:
        problems.append(
            Problem(STACK_FILE, f"expected one cron-function entry, found {len(crons)}")
        )
    for name, spec in crons:
        schedule = (spec.get("annotations") or {}).get("schedule")
        if handler_dir(str(spec.get("handler", ""))) != NIGHTLY_FUNCTION:
            problems.append(
                Problem(STACK_FILE, f"{name}: the nightly run must call {NIGHTLY_FUNCTION}")
            )
        if schedule != NIGHTLY_SCHEDULE:
            problems.append(
                Problem(STACK_FILE, f"{name}: schedule {schedule!r}, expected {NIGHTLY_SCHEDULE!r}")
            )
    pings = of_kind(manifests(root), "sources.knative.dev/v1", "PingSource")
    sinks = kafka_sinks(root)
    nightly = [d for d in pings if d.body.get("spec", {}).get("schedule") == NIGHTLY_SCHEDULE]
    if len(nightly) != 1:
        problems.append(
            Problem(
                KNATIVE_DIR,
                f"expected one PingSource at {NIGHTLY_SCHEDULE!r}, found {len(nightly)}",
            )
        )
    for doc in nightly:
        zone = doc.body.get("spec", {}).get("timezone")
        if zone != NIGHTLY_TIMEZONE:
            problems.append(
                Problem(doc.file, f"{doc.label}: timezone {zone!r}, expected {NIGHTLY_TIMEZONE!r}")
            )
        target = sink_ref(doc)
        into_topic = target.get("kind") == "KafkaSink" and (
            sinks.get(str(target.get("name"))) == topics.RECONCILE_REQUESTED
        )
        into_service = target.get("kind") == "Service" and target.get("name") == NIGHTLY_FUNCTION
        if not (into_topic or into_service):
            problems.append(
                Problem(
                    doc.file,
                    f"{doc.label}: must sink into {topics.RECONCILE_REQUESTED} or the "
                    f"{NIGHTLY_FUNCTION} Service",
                )
            )
    return problems
