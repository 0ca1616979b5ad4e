"""Consistency checks between what is deployed and what the code says.

Every ``check_*`` function takes a repository root - the real one, or a mutated copy in a
test's tmp_path - and returns a list of :class:`Problem`; empty means consistent.
The code side (topic names, settings, secret names) always comes from the imported
``shared_lib``; the deployment side is read from files under ``root``:

    stack.yml, Dockerfile, requirements.lock, gunicorn.conf.py, shared_lib/wsgi.py,
    infra/knative/*.yaml (Knative Serving/Eventing), infra/data/*.yaml (the stores, as
    MariaDB, Redis and Strimzi operator resources)

Core Kubernetes kinds are validated with ``kubernetes-validate`` (strict schemas of
KUBERNETES_VERSION); Knative, Strimzi, OpenFaaS and kustomize files with the JSON Schemas
in ``schemas/`` (see schemas/README.md), which reuse the Kubernetes definitions; the
MariaDB and Redis operators' resources with schemas extracted from their own CRDs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.deploy.manifests.build import (
    check_dockerfiles,
    check_kustomizations,
    check_runtime_env,
)
from tests.deploy.manifests.functions import (
    check_concurrency,
    check_functions_deployed,
    check_handlers,
    check_images,
)
from tests.deploy.manifests.loading import (
    Problem,
    function_dirs,
    handler_dir,
    stack_functions,
    substitute_defaults,
)
from tests.deploy.manifests.probes import check_hardening, check_probes
from tests.deploy.manifests.schemas import check_schemas
from tests.deploy.manifests.settings import check_environment, check_secrets
from tests.deploy.manifests.stores import (
    check_connection_budget,
    check_database_urls,
    check_redis_url,
    check_store_guarantees,
)
from tests.deploy.manifests.topics import (
    check_bootstrap,
    check_kafka_sources,
    check_nightly,
    check_stack_topics,
    check_strimzi_topics,
)

CHECKS: tuple[Callable[[Path], list[Problem]], ...] = (
    check_handlers,
    check_functions_deployed,
    check_images,
    check_concurrency,
    check_stack_topics,
    check_kafka_sources,
    check_strimzi_topics,
    check_bootstrap,
    check_nightly,
    check_environment,
    check_secrets,
    check_probes,
    check_hardening,
    check_schemas,
    check_database_urls,
    check_redis_url,
    check_store_guarantees,
    check_connection_budget,
    check_kustomizations,
    check_dockerfiles,
    check_runtime_env,
)


def check_all(root: Path) -> list[Problem]:
    return sorted(problem for check in CHECKS for problem in check(root))


__all__ = [
    "CHECKS",
    "Problem",
    "check_all",
    "function_dirs",
    "handler_dir",
    "stack_functions",
    "substitute_defaults",
    *(check.__name__ for check in CHECKS),
]
