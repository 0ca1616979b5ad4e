"""The stores as operator resources: their CRD schemas catch typos, the functions' URLs
name the Services the operators create, the promised guarantees are configured, and the
schemas come from the operator releases infra/README.md installs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import manifests
from tests.deploy.manifests import Problem
from tests.deploy.repo_copy import ROOT, edit_documents, named
from tests.deploy.schemas.extract_crd_schemas import schemas

MARIADB = "infra/data/mariadb.yaml"
REDIS = "infra/data/redis.yaml"
SECRETS = "infra/knative/secret.example.yaml"
SCHEMA_DIR = ROOT / "tests" / "deploy" / "schemas"


def replication(documents: list[dict[str, Any]]) -> dict[str, Any]:
    return named(documents, "MariaDB", "mariadb")["spec"]["replication"]


def set_secret(root: Path, key: str, value: str) -> None:
    def change(documents: list[dict[str, Any]]) -> None:
        documents[0]["stringData"][key] = value

    edit_documents(root, SECRETS, change)


# ---------------------------------------------------------------- schemas


def test_a_misspelt_mariadb_field_fails_the_operators_schema(copy: Path) -> None:
    def typo(documents: list[dict[str, Any]]) -> None:
        spec = replication(documents)
        spec["semiSyncWaitpoint"] = spec.pop("semiSyncWaitPoint")

    edit_documents(copy, MARIADB, typo)
    assert manifests.check_schemas(copy) == [
        Problem(
            MARIADB,
            "MariaDB mariadb: spec.replication: Additional properties are not allowed "
            "('semiSyncWaitpoint' was unexpected)",
        )
    ]


def test_a_value_outside_the_crds_enum_fails(copy: Path) -> None:
    def wrong(documents: list[dict[str, Any]]) -> None:
        replication(documents)["semiSyncWaitPoint"] = "AfterFlush"

    edit_documents(copy, MARIADB, wrong)
    assert manifests.check_schemas(copy) == [
        Problem(
            MARIADB,
            "MariaDB mariadb: spec.replication.semiSyncWaitPoint: 'AfterFlush' is not one of "
            "['AfterSync', 'AfterCommit']",
        )
    ]


def test_a_misspelt_sentinel_field_fails_the_operators_schema(copy: Path) -> None:
    def typo(documents: list[dict[str, Any]]) -> None:
        config = named(documents, "RedisSentinel", "redis")["spec"]["redisSentinelConfig"]
        config["masterGroupname"] = config.pop("masterGroupName")

    edit_documents(copy, REDIS, typo)
    assert manifests.check_schemas(copy) == [
        Problem(
            REDIS,
            "RedisSentinel redis: spec.redisSentinelConfig: Additional properties are not "
            "allowed ('masterGroupname' was unexpected)",
        )
    ]


def test_an_operator_kind_without_a_schema_is_reported(copy: Path) -> None:
    def add_backup(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        backup = {
            "apiVersion": "k8s.mariadb.com/v1alpha1",
            "kind": "Backup",
            "metadata": {"name": "logical"},
            "spec": {"mariaDbRef": {"name": "mariadb"}},
        }
        return [*documents, backup]

    edit_documents(copy, MARIADB, add_backup)
    assert manifests.check_schemas(copy) == [
        Problem(MARIADB, "Backup logical: no schema for k8s.mariadb.com/v1alpha1 Backup")
    ]


def test_the_extractor_closes_what_the_api_server_prunes(tmp_path: Path) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "spec": {
            "group": "example.com",
            "names": {"kind": "Thing"},
            "versions": [
                {"name": "v1alpha1", "served": False},
                {
                    "name": "v1",
                    "served": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "description": "dropped",
                                    "properties": {
                                        "size": {"x-kubernetes-int-or-string": True},
                                        "free": {
                                            "type": "object",
                                            "properties": {"a": {"type": "string"}},
                                            "x-kubernetes-preserve-unknown-fields": True,
                                        },
                                        "labels": {
                                            "type": "object",
                                            "additionalProperties": {"type": "string"},
                                        },
                                        "when": {"type": "string", "format": "date-time"},
                                        "every": {"type": "string", "format": "duration"},
                                        "note": {"type": "string", "nullable": True},
                                    },
                                },
                                "status": {"type": "object"},
                            },
                        }
                    },
                },
            ],
        },
    }
    source = tmp_path / "crd.yaml"
    source.write_text(yaml.safe_dump(crd), encoding="utf-8")
    [(name, schema)] = list(schemas(source, None, "a test"))
    assert name == "example.com_v1_Thing.schema.json"
    assert set(schema["properties"]) == {"apiVersion", "kind", "metadata", "spec"}
    assert schema["additionalProperties"] is False
    assert schema["properties"]["kind"] == {"const": "Thing"}
    spec = schema["properties"]["spec"]
    assert spec["additionalProperties"] is False
    assert "description" not in spec
    fields = spec["properties"]
    assert fields["size"] == {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    assert "additionalProperties" not in fields["free"]
    assert fields["labels"]["additionalProperties"] == {"type": "string"}
    assert fields["when"] == {"type": "string", "format": "date-time"}
    assert fields["every"] == {"type": "string"}
    assert fields["note"] == {"type": ["string", "null"]}


# ---------------------------------------------------------------- the functions' URLs


def test_a_database_url_at_a_service_the_operator_does_not_create_is_reported(
    copy: Path,
) -> None:
    set_secret(
        copy,
        "psi-database-url",
        "mysql+pymysql://psi:x@mysql-primary.psi-data.svc.cluster.local:3306/psi",
    )
    assert manifests.check_database_urls(copy) == [
        Problem(
            SECRETS,
            "psi-secrets psi-database-url: host mysql-primary.psi-data.svc.cluster.local:3306,"
            " but MariaDB mariadb serves it as mariadb-primary.psi-data.svc.cluster.local:3306",
        )
    ]


def test_a_database_url_with_an_ungranted_user_is_reported(copy: Path) -> None:
    set_secret(
        copy,
        "psi-database-read-url",
        "mysql+pymysql://reader:x@mariadb-secondary.psi-data.svc.cluster.local:3306/psi",
    )
    assert manifests.check_database_urls(copy) == [
        Problem(
            SECRETS,
            "psi-secrets psi-database-read-url: user 'reader' is not a User granted on 'psi'",
        )
    ]


def test_a_redis_url_missing_a_sentinel_or_naming_another_group_is_reported(
    copy: Path,
) -> None:
    hosts = ",".join(
        f"redis-sentinel-{i}.redis-sentinel-headless.psi-data.svc.cluster.local:26379"
        for i in range(2)
    )
    set_secret(copy, "psi-redis-url", f"redis+sentinel://:x@{hosts}/myMaster/0")
    problems = manifests.check_redis_url(copy)
    assert [p.message.split(": ")[1].split(" ")[0] for p in problems] == ["sentinels", "master"]
    assert "the Sentinels monitor 'mymaster'" in problems[1].message


def test_sentinels_watching_no_replication_are_reported(copy: Path) -> None:
    def rename(documents: list[dict[str, Any]]) -> None:
        named(documents, "RedisReplication", "redis")["metadata"]["name"] = "cache"

    edit_documents(copy, REDIS, rename)
    assert manifests.check_redis_url(copy) == [
        Problem(
            REDIS,
            "RedisSentinel redis: redisReplicationName 'redis' is none of the "
            "RedisReplications ['cache']",
        )
    ]


# ---------------------------------------------------------------- guarantees


def test_eviction_in_the_redis_gate_is_reported(copy: Path) -> None:
    def evict(documents: list[dict[str, Any]]) -> None:
        data = named(documents, "ConfigMap", "redis-config")["data"]
        data["redis-additional.conf"] = data["redis-additional.conf"].replace(
            "noeviction", "allkeys-lru"
        )

    edit_documents(copy, REDIS, evict)
    assert manifests.check_store_guarantees(copy) == [
        Problem(
            REDIS,
            "RedisReplication redis: its additionalRedisConfig (redis-config, key "
            "redis-additional.conf) lacks 'maxmemory-policy noeviction'",
        )
    ]


def test_lossy_replication_without_failover_or_backups_is_reported(copy: Path) -> None:
    def weaken(documents: list[dict[str, Any]]) -> None:
        spec = replication(documents)
        spec["semiSyncWaitPoint"] = "AfterCommit"
        spec["primary"]["autoFailover"] = False
        named(documents, "PhysicalBackup", "mariadb-nightly")["spec"]["schedule"]["suspend"] = True

    edit_documents(copy, MARIADB, weaken)
    assert manifests.check_store_guarantees(copy) == [
        Problem(MARIADB, "MariaDB mariadb: replication.semiSyncWaitPoint is not AfterSync"),
        Problem(MARIADB, "MariaDB mariadb: replication.primary.autoFailover is not True"),
        Problem(
            MARIADB,
            "PointInTimeRecovery mariadb-pitr: its base PhysicalBackup is not scheduled",
        ),
    ]


def test_binary_logs_left_to_rotate_by_size_alone_are_reported(copy: Path) -> None:
    def suspend(documents: list[dict[str, Any]]) -> None:
        named(documents, "SqlJob", "mariadb-rotate-binlogs")["spec"]["schedule"]["suspend"] = True

    edit_documents(copy, MARIADB, suspend)
    problems = manifests.check_store_guarantees(copy)
    assert [p.message.split(" (")[0] for p in problems] == [
        "MariaDB mariadb: no scheduled SqlJob runs FLUSH BINARY LOGS"
    ]


def test_the_crds_default_connection_limit_is_reported(copy: Path) -> None:
    def default(documents: list[dict[str, Any]]) -> None:
        del named(documents, "User", "psi")["spec"]["maxUserConnections"]

    edit_documents(copy, MARIADB, default)
    problems = manifests.check_connection_budget(copy)
    assert [p.message.split(",")[0] for p in problems] == [
        "User psi: maxUserConnections None < 3360",
        "User psi: maxUserConnections None < 3390",
    ]


def test_max_connections_below_the_user_limit_is_reported(copy: Path) -> None:
    def lower(documents: list[dict[str, Any]]) -> None:
        spec = named(documents, "MariaDB", "mariadb")["spec"]
        spec["myCnf"] = spec["myCnf"].replace("max_connections=5000", "max_connections=151")

    edit_documents(copy, MARIADB, lower)
    assert manifests.check_connection_budget(copy) == [
        Problem(
            MARIADB,
            "MariaDB mariadb: max_connections 151 leaves no room above User psi's "
            "maxUserConnections 4500",
        )
    ]


# ---------------------------------------------------------------- pinned operators


def generated_sources() -> dict[str, str]:
    """Schema file -> the '<repository> tag v<version>' it was extracted from."""
    sources = {}
    for path in sorted(SCHEMA_DIR.glob("*.schema.json")):
        comment = json.loads(path.read_text(encoding="utf-8")).get("$comment", "")
        match = re.search(r"from github\.com/(\S+) tag v(\S+) ", comment)
        if match:
            sources[path.name] = f"{match.group(1)} {match.group(2)}"
    return sources


def test_every_operator_kind_deployed_has_a_schema_from_its_operators_crd() -> None:
    documents = manifests.loading.manifests(ROOT)
    kinds = {
        f"{d.api_version.replace('/', '_')}_{d.kind}.schema.json"
        for d in documents
        if d.api_version.startswith(("k8s.mariadb.com/", "redis.redis.opstreelabs.in/"))
    }
    assert kinds
    assert kinds <= set(generated_sources())


@pytest.mark.parametrize(
    ("repository", "charts"),
    [
        ("mariadb-operator/mariadb-operator", ("mariadb-operator-crds", "mariadb-operator")),
        ("OT-CONTAINER-KIT/redis-operator", ("ot-helm/redis-operator",)),
    ],
)
def test_the_operators_are_installed_at_the_release_the_schemas_come_from(
    repository: str, charts: tuple[str, ...]
) -> None:
    versions = {v.split()[1] for v in generated_sources().values() if v.startswith(repository)}
    assert len(versions) == 1, versions
    readme = (ROOT / "infra" / "README.md").read_text(encoding="utf-8")
    for chart in charts:
        installs = [
            ln
            for ln in readme.splitlines()
            if re.search(r"helm (upgrade --install|install) ", ln)
            and re.search(rf" \S*{chart} ", ln)
        ]
        assert installs, f"infra/README.md installs no {chart}"
        for line in installs:
            assert f"--version {next(iter(versions))}" in line, line
