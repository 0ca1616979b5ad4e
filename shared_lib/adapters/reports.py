"""Where reconcile reports go (an object store through the S3 API, or a local directory),
and how they are rendered: JSON (the summary and every drift row) and CSV.

Reports are written under ``reconcile/<YYYY-MM-DD>/<run_id>.json`` and ``.csv`` (the date
of the run's start, UTC). ``boto3`` is imported only when an S3 store is used.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from shared_lib.config import Settings
from shared_lib.domain.model import utcnow
from shared_lib.services.reconcile.drift import DRIFT_COLUMNS
from shared_lib.services.reconcile.ports import DriftRows

log = logging.getLogger(__name__)
PREFIX = "reconcile"
JSON_TYPE = "application/json"
BLOB_TYPE = "application/octet-stream"
CSV_TYPE = "text/csv; charset=utf-8"


def report_key(run_id: str, at: datetime | None, prefix: str = PREFIX) -> str:
    """``reconcile/<date>/<run_id>`` (without the extension)."""
    day = (at or utcnow()).date().isoformat()
    return f"{prefix}/{day}/{run_id}" if prefix else f"{day}/{run_id}"


def render_report(summary: Mapping[str, Any], drift: DriftRows) -> tuple[bytes, bytes]:
    """The report as JSON (summary + every drift row) and CSV (one line per drift row)."""
    out = io.StringIO()
    out.write("{\n")
    for name, value in summary.items():
        out.write(f"  {json.dumps(name)}: {json.dumps(value, default=str)},\n")
    out.write('  "drift": [')
    for i, row in enumerate(drift.rows()):
        out.write(("," if i else "") + "\n    " + json.dumps(row, separators=(",", ":")))
    out.write("\n  ]\n}\n" if drift.found else "]\n}\n")
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=DRIFT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(drift.rows())
    return out.getvalue().encode("utf-8"), table.getvalue().encode("utf-8")


class S3Reports:
    """Reports in an S3 bucket (AWS, MinIO, Ceph, moto ...); credentials come the usual
    boto3 way (environment, profile, instance role)."""

    def __init__(
        self,
        bucket: str,
        endpoint_url: str | None = None,
        *,
        prefix: str = PREFIX,
        region_name: str | None = None,
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.prefix = prefix
        self.region_name = region_name
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client(
                "s3", endpoint_url=self.endpoint_url, region_name=self.region_name
            )
        return self._client

    def put(
        self,
        run_id: str,
        summary: Mapping[str, Any],
        drift: DriftRows,
        *,
        at: datetime | None = None,
    ) -> str:
        json_bytes, csv_bytes = render_report(summary, drift)
        key = report_key(run_id, at, self.prefix)
        # CSV first: the JSON's presence means the whole report is there
        self.client.put_object(
            Bucket=self.bucket, Key=f"{key}.csv", Body=csv_bytes, ContentType=CSV_TYPE
        )
        self.client.put_object(
            Bucket=self.bucket, Key=f"{key}.json", Body=json_bytes, ContentType=JSON_TYPE
        )
        return f"s3://{self.bucket}/{key}.json"

    def keep(self, name: str, data: bytes) -> str:
        """Store ``data`` under ``name`` (a claim check); returns its URI."""
        self.client.put_object(Bucket=self.bucket, Key=name, Body=data, ContentType=BLOB_TYPE)
        return f"s3://{self.bucket}/{name}"

    def fetch(self, uri: str) -> bytes:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        body: bytes = self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return body


class LocalReports:
    """Reports as files under ``directory`` (the embedded default)."""

    def __init__(self, directory: Path | str, *, prefix: str = PREFIX) -> None:
        self.directory = Path(directory)
        self.prefix = prefix

    def put(
        self,
        run_id: str,
        summary: Mapping[str, Any],
        drift: DriftRows,
        *,
        at: datetime | None = None,
    ) -> str:
        json_bytes, csv_bytes = render_report(summary, drift)
        base = self.directory / report_key(run_id, at, self.prefix)
        base.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(base.with_suffix(".csv"), csv_bytes)
        target = base.with_suffix(".json")
        _write_atomically(target, json_bytes)
        return target.resolve().as_uri()

    def keep(self, name: str, data: bytes) -> str:
        """Store ``data`` under ``name`` (a claim check); returns its URI."""
        target = self.directory / name
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(target, data)
        return target.resolve().as_uri()

    def fetch(self, uri: str) -> bytes:
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(uri).path)).read_bytes()


def _write_atomically(path: Path, data: bytes) -> None:
    # readers never see half a report: write aside, then rename over
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def reports_from_settings(settings: Settings) -> S3Reports | LocalReports:
    """S3 when a bucket is configured, else ``<data_dir>/reports``."""
    if settings.s3_bucket:
        return S3Reports(settings.s3_bucket, settings.s3_endpoint)
    return LocalReports(settings.data_dir / "reports")


# ---- the reconcile's view of the system of record --------------------------------------
