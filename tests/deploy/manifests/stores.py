"""The stores as the operators run them (infra/data) against what the functions use.

The MariaDB operator (k8s.mariadb.com) names the Services of a replicated ``MariaDB`` X
``X-primary`` and ``X-secondary`` (mariadb-operator ``api/v1alpha1/mariadb_keys.go``); the
redis-operator runs the Sentinels of a ``RedisSentinel`` Y as StatefulSet ``Y-sentinel``
governed by the headless Service ``Y-sentinel-headless`` (redis-operator
``internal/k8sutils/redis-sentinel.go``, ``statefulset.go``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from tests.deploy.manifests.build import kustomization
from tests.deploy.manifests.loading import (
    DATA_DIR,
    DEFAULT_WORKERS,
    KNATIVE_CONFIGMAP,
    KNATIVE_DIR,
    KNATIVE_SECRET,
    Document,
    Problem,
    container_env,
    knative_services,
    load_documents,
    manifests,
    of_kind,
    service_container,
    stack_functions,
)

MARIADB_API = "k8s.mariadb.com/v1alpha1"
REDIS_API = "redis.redis.opstreelabs.in/v1beta2"
SECRET_EXAMPLE = f"{KNATIVE_DIR}/secret.example.yaml"
# The key the redis-operator includes from the ConfigMap named by additionalRedisConfig
# (internal/agent/bootstrap/redis/config.go, EXTERNAL_CONFIG_FILE).
REDIS_CONFIG_KEY = "redis-additional.conf"
# Each gunicorn worker's pool: pool_size plus max_overflow = 2 x pool_size
# (shared_lib/adapters/sql_engine.py, make_engine).
CONNECTIONS_PER_POOL_SIZE = 3
DEFAULT_POOL_SIZE = 5
# OpenFaaS's default com.openfaas.scale.max
OPENFAAS_DEFAULT_MAX_SCALE = 20


def spec(doc: Document) -> dict[str, Any]:
    return doc.body.get("spec") or {}


def data_namespace(root: Path) -> str:
    return str((kustomization(root, DATA_DIR) or {}).get("namespace", ""))


def fqdn(name: str, namespace: str) -> str:
    return f"{name}.{namespace}.svc.cluster.local"


def function_secrets(root: Path) -> dict[str, str]:
    """The example values of the functions' Secret psi-secrets."""
    for doc in load_documents(root, KNATIVE_DIR):
        if doc.kind == "Secret" and doc.name == KNATIVE_SECRET:
            return {k: str(v) for k, v in (doc.body.get("stringData") or {}).items()}
    return {}


def sql_object_name(doc: Document) -> str:
    """A Database or User: spec.name, else the object's name (the operator's rule)."""
    return str(spec(doc).get("name") or doc.name)


def one(docs: list[Document], what: str, problems: list[Problem]) -> Document | None:
    if len(docs) != 1:
        problems.append(Problem(DATA_DIR, f"expected one {what}, found {len(docs)}"))
        return None
    return docs[0]


def check_database_urls(root: Path) -> list[Problem]:
    """psi-database-url names the MariaDB's primary Service, the psi Database and a User
    granted on it; psi-database-read-url the secondary Service."""
    problems: list[Problem] = []
    docs = manifests(root)
    mariadb = one(of_kind(docs, MARIADB_API, "MariaDB"), "MariaDB", problems)
    database = one(of_kind(docs, MARIADB_API, "Database"), "Database", problems)
    if mariadb is None or database is None:
        return problems
    namespace = data_namespace(root)
    users = {sql_object_name(d): d for d in of_kind(docs, MARIADB_API, "User")}
    granted = {
        str(spec(g).get("username"))
        for g in of_kind(docs, MARIADB_API, "Grant")
        if spec(g).get("database") == sql_object_name(database)
    }
    secrets = function_secrets(root)
    for key, service in (
        ("psi-database-url", f"{mariadb.name}-primary"),
        ("psi-database-read-url", f"{mariadb.name}-secondary"),
    ):
        url = urlsplit(secrets.get(key, ""))
        where = f"{KNATIVE_SECRET} {key}"
        if f"{url.hostname}:{url.port}" != f"{fqdn(service, namespace)}:3306":
            problems.append(
                Problem(
                    SECRET_EXAMPLE,
                    f"{where}: host {url.hostname}:{url.port}, but MariaDB {mariadb.name}"
                    f" serves it as {fqdn(service, namespace)}:3306",
                )
            )
        if url.path.strip("/") != sql_object_name(database):
            problems.append(
                Problem(
                    SECRET_EXAMPLE,
                    f"{where}: database {url.path.strip('/')!r}, but the Database is"
                    f" {sql_object_name(database)!r}",
                )
            )
        user = unquote(url.username or "")
        if user not in users or user not in granted:
            problems.append(
                Problem(
                    SECRET_EXAMPLE,
                    f"{where}: user {user!r} is not a User granted on"
                    f" {sql_object_name(database)!r}",
                )
            )
    return problems


def check_redis_url(root: Path) -> list[Problem]:
    """psi-redis-url lists every Sentinel of the RedisSentinel by its per-pod name, asks
    for its master group and carries a password; the Sentinels watch the RedisReplication."""
    problems: list[Problem] = []
    docs = manifests(root)
    sentinel = one(of_kind(docs, REDIS_API, "RedisSentinel"), "RedisSentinel", problems)
    if sentinel is None:
        return problems
    config = spec(sentinel).get("redisSentinelConfig") or {}
    replications = {d.name for d in of_kind(docs, REDIS_API, "RedisReplication")}
    if config.get("redisReplicationName") not in replications:
        problems.append(
            Problem(
                sentinel.file,
                f"{sentinel.label}: redisReplicationName {config.get('redisReplicationName')!r}"
                f" is none of the RedisReplications {sorted(replications)}",
            )
        )
    namespace = data_namespace(root)
    statefulset = f"{sentinel.name}-sentinel"
    wanted = [
        f"{fqdn(f'{statefulset}-{i}.{statefulset}-headless', namespace)}:26379"
        for i in range(int(spec(sentinel).get("clusterSize", 3)))
    ]
    url = function_secrets(root).get("psi-redis-url", "")
    parts = urlsplit(url)
    credentials, _, hosts = parts.netloc.rpartition("@")
    path = [p for p in parts.path.split("/") if p]
    where = f"{KNATIVE_SECRET} psi-redis-url"
    if parts.scheme != "redis+sentinel":
        problems.append(Problem(SECRET_EXAMPLE, f"{where}: not a redis+sentinel:// URL"))
    if hosts.split(",") != wanted:
        problems.append(
            Problem(SECRET_EXAMPLE, f"{where}: sentinels {hosts.split(',')}, expected {wanted}")
        )
    group = str(config.get("masterGroupName", ""))
    if not path or path[0] != group:
        problems.append(
            Problem(
                SECRET_EXAMPLE,
                f"{where}: master group {path[0] if path else None!r}, the Sentinels"
                f" monitor {group!r}",
            )
        )
    if not credentials.partition(":")[2]:
        problems.append(Problem(SECRET_EXAMPLE, f"{where}: no password"))
    return problems


def check_store_guarantees(root: Path) -> list[Problem]:
    """What infra/README.md promises: MariaDB fails over by itself with lossless semi-sync
    and has scheduled backups to S3 with binlog archival, its binary logs rotated on a
    schedule; Redis never evicts a key."""
    problems: list[Problem] = []
    docs = manifests(root)
    mariadb = one(of_kind(docs, MARIADB_API, "MariaDB"), "MariaDB", problems)
    if mariadb is not None:
        problems += mariadb_guarantees(mariadb, docs)
    for replication in of_kind(docs, REDIS_API, "RedisReplication"):
        name = (spec(replication).get("redisConfig") or {}).get("additionalRedisConfig")
        config = next((d for d in docs if d.kind == "ConfigMap" and d.name == name), None)
        text = ((config.body.get("data") or {}) if config else {}).get(REDIS_CONFIG_KEY, "")
        lines = {" ".join(line.split()) for line in str(text).splitlines()}
        if "maxmemory-policy noeviction" not in lines:
            problems.append(
                Problem(
                    replication.file,
                    f"{replication.label}: its additionalRedisConfig ({name}, key"
                    f" {REDIS_CONFIG_KEY}) lacks 'maxmemory-policy noeviction'",
                )
            )
    return problems


def mariadb_guarantees(mariadb: Document, docs: list[Document]) -> list[Problem]:
    replication = spec(mariadb).get("replication") or {}
    wanted = {
        "enabled": True,
        "semiSyncEnabled": True,
        "semiSyncWaitPoint": "AfterSync",
        "syncBinlog": 1,
        "primary.autoFailover": True,
    }
    problems = []
    for field, value in wanted.items():
        section, _, key = field.rpartition(".")
        found = (replication.get(section) or {}) if section else replication
        if found.get(key) != value:
            problems.append(
                Problem(mariadb.file, f"{mariadb.label}: replication.{field} is not {value}")
            )
    if int(spec(mariadb).get("replicas", 1)) < 3:
        problems.append(
            Problem(mariadb.file, f"{mariadb.label}: fewer than 3 replicas (a primary and two)")
        )
    pitr_name = (spec(mariadb).get("pointInTimeRecoveryRef") or {}).get("name")
    pitr = next(
        (d for d in of_kind(docs, MARIADB_API, "PointInTimeRecovery") if d.name == pitr_name),
        None,
    )
    backups = {d.name: d for d in of_kind(docs, MARIADB_API, "PhysicalBackup")}
    base = backups.get((spec(pitr).get("physicalBackupRef") or {}).get("name")) if pitr else None
    schedule = (spec(base).get("schedule") or {}) if base else {}
    if pitr is None or "s3" not in (spec(pitr).get("storage") or {}):
        problems.append(
            Problem(mariadb.file, f"{mariadb.label}: no PointInTimeRecovery archiving to S3")
        )
    elif base is None or not schedule.get("cron") or schedule.get("suspend"):
        problems.append(
            Problem(pitr.file, f"{pitr.label}: its base PhysicalBackup is not scheduled")
        )
    elif "s3" not in (spec(base).get("storage") or {}):
        problems.append(Problem(base.file, f"{base.label}: does not back up to S3"))
    if not any(rotates_binlogs(job, mariadb) for job in of_kind(docs, MARIADB_API, "SqlJob")):
        problems.append(
            Problem(
                mariadb.file,
                f"{mariadb.label}: no scheduled SqlJob runs FLUSH BINARY LOGS (the agent"
                " archives closed binary logs only, so the restore point would lag until"
                " max_binlog_size fills)",
            )
        )
    return problems


def rotates_binlogs(job: Document, mariadb: Document) -> bool:
    schedule = spec(job).get("schedule") or {}
    return (
        (spec(job).get("mariaDbRef") or {}).get("name") == mariadb.name
        and bool(schedule.get("cron"))
        and not schedule.get("suspend")
        and "FLUSH BINARY LOGS" in " ".join(str(spec(job).get("sql", "")).upper().split())
    )


def check_connection_budget(root: Path) -> list[Problem]:
    """Every database connection the functions can open at their maximum scale fits in
    User psi's maxUserConnections (the CRD's default is 10), which fits in max_connections."""
    problems: list[Problem] = []
    docs = manifests(root)
    mariadb = one(of_kind(docs, MARIADB_API, "MariaDB"), "MariaDB", problems)
    user_name = urlsplit(function_secrets(root).get("psi-database-url", "")).username
    users = of_kind(docs, MARIADB_API, "User")
    user = next((u for u in users if sql_object_name(u) == user_name), None)
    if mariadb is None or user is None:
        return problems
    limit = spec(user).get("maxUserConnections")
    server = max_connections(str(spec(mariadb).get("myCnf", "")))
    for platform, needed in (
        ("Knative", knative_connections(root)),
        ("OpenFaaS", stack_connections(root)),
    ):
        if needed is None:
            problems.append(
                Problem(
                    KNATIVE_DIR, "a Knative Service without max-scale opens unbounded connections"
                )
            )
        elif limit is None or needed > int(limit):
            problems.append(
                Problem(
                    user.file,
                    f"{user.label}: maxUserConnections {limit} < {needed}, what the functions"
                    f" open on {platform} at their maximum scale",
                )
            )
    if limit is not None and (server is None or int(limit) >= server):
        problems.append(
            Problem(
                mariadb.file,
                f"{mariadb.label}: max_connections {server} leaves no room above User"
                f" {user.name}'s maxUserConnections {limit}",
            )
        )
    return problems


def max_connections(my_cnf: str) -> int | None:
    for line in my_cnf.splitlines():
        key, _, value = line.partition("=")
        if key.strip().replace("-", "_") == "max_connections":
            return int(value.strip())
    return None


def knative_connections(root: Path) -> int | None:
    """None when a Service may scale without bound (no max-scale, or "0")."""
    shared = DEFAULT_POOL_SIZE
    for doc in manifests(root):
        if doc.kind == "ConfigMap" and doc.name == KNATIVE_CONFIGMAP:
            shared = int((doc.body.get("data") or {}).get("PSI_DB_POOL_SIZE", shared))
    total = 0
    for doc in knative_services(root).values():
        template = doc.body.get("spec", {}).get("template", {})
        annotations = (template.get("metadata") or {}).get("annotations") or {}
        pods = int(annotations.get("autoscaling.knative.dev/max-scale", 0))
        if pods <= 0:
            return None
        env = container_env(service_container(doc))
        workers = int(env.get("WEB_CONCURRENCY") or DEFAULT_WORKERS)
        pool = int(env.get("PSI_DB_POOL_SIZE") or shared)
        total += pods * workers * CONNECTIONS_PER_POOL_SIZE * pool
    return total


def stack_connections(root: Path) -> int:
    total = 0
    for spec_ in stack_functions(root).values():
        labels = spec_.get("labels") or {}
        env = spec_.get("environment") or {}
        pods = int(labels.get("com.openfaas.scale.max", OPENFAAS_DEFAULT_MAX_SCALE))
        workers = int(env.get("WEB_CONCURRENCY", DEFAULT_WORKERS))
        pool = int(env.get("PSI_DB_POOL_SIZE", DEFAULT_POOL_SIZE))
        total += pods * workers * CONNECTIONS_PER_POOL_SIZE * pool
    return total
