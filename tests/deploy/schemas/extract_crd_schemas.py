"""Write the JSON Schemas of custom resources from their operator's own CRD file.

    python tests/deploy/schemas/extract_crd_schemas.py CRD.yaml --source TEXT [--kind K ...]

For every CustomResourceDefinition in CRD.yaml (a multi-document YAML file, e.g. a chart's
crds.yaml) and every *served* version, writes ``<group>_<version>_<Kind>.schema.json``
next to this script (or into --out). --kind limits the kinds; --source is recorded in the
schema's ``$comment`` (where the CRD came from: repository, release tag, path).

The CRD's ``openAPIV3Schema`` (OpenAPI 3.0) becomes JSON Schema 2020-12 without changing
what the API server accepts and keeps:

- an object with ``properties`` and neither ``additionalProperties`` nor
  ``x-kubernetes-preserve-unknown-fields`` is closed (``additionalProperties: false``): the
  API server prunes unknown fields of such an object, so a misspelt field would be dropped
  silently; here it is an error. An object without ``properties`` is left open.
- ``nullable: true`` adds ``"null"`` to the type; ``x-kubernetes-int-or-string`` becomes
  integer-or-string.
- ``format`` is kept only for ``date-time`` (RFC 3339 in both): Kubernetes' other formats
  (``duration`` is Go's, ``int32``...) mean something else, or nothing, to JSON Schema.
- the root ``metadata`` is ``_common.schema.json#/$defs/metadata``; the root ``status`` is
  dropped (the operator writes it, a manifest must not); ``apiVersion`` and ``kind`` are
  constants.
- ``description``s and the ``x-kubernetes-*`` annotations are dropped (CEL rules in
  ``x-kubernetes-validations`` cannot run offline; the API server still checks them).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

SCHEMA_DIR = Path(__file__).parent
ID_BASE = "https://psi-functions.example/schemas/"
KEPT_FORMATS = frozenset({"date-time"})
DROPPED = frozenset({"description", "example", "externalDocs", "nullable", "format"})


def convert(node: Any) -> Any:
    """One OpenAPI 3.0 schema node (and everything under it) as JSON Schema 2020-12."""
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {
        key: value
        for key, value in node.items()
        if key not in DROPPED and not key.startswith("x-kubernetes-")
    }
    if node.get("format") in KEPT_FORMATS:
        out["format"] = node["format"]
    for key in ("properties", "patternProperties"):
        if key in node:
            out[key] = {name: convert(sub) for name, sub in node[key].items()}
    for key in ("items", "not"):
        if isinstance(node.get(key), dict):
            out[key] = convert(node[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in node:
            out[key] = [convert(sub) for sub in node[key]]
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = convert(node["additionalProperties"])
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    closable = (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    )
    if closable:
        out["additionalProperties"] = False
    return out


def resource_schema(group: str, version: str, kind: str, root: dict[str, Any]) -> dict[str, Any]:
    body = convert(root)
    properties = body.setdefault("properties", {})
    properties.pop("status", None)
    properties["apiVersion"] = {"const": f"{group}/{version}"}
    properties["kind"] = {"const": kind}
    properties["metadata"] = {"$ref": "_common.schema.json#/$defs/metadata"}
    body["additionalProperties"] = False
    body["required"] = sorted({"apiVersion", "kind", "metadata", *body.get("required", [])})
    return body


def schemas(
    crd_file: Path, kinds: set[str] | None, source: str
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(file name, schema) for each served version of each selected kind."""
    for crd in yaml.safe_load_all(crd_file.read_text(encoding="utf-8")):
        if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
            continue
        spec = crd["spec"]
        group, kind = spec["group"], spec["names"]["kind"]
        if kinds is not None and kind not in kinds:
            continue
        for version in spec["versions"]:
            if not version.get("served"):
                continue
            name = f"{group}_{version['name']}_{kind}.schema.json"
            body = resource_schema(
                group, version["name"], kind, version["schema"]["openAPIV3Schema"]
            )
            yield (
                name,
                {
                    "$schema": "https://json-schema.org/draft/2020-12/schema",
                    "$id": ID_BASE + name,
                    "title": f"{kind} ({group}/{version['name']})",
                    "$comment": f"Generated by extract_crd_schemas.py from {source}; "
                    "do not edit by hand.",
                    **body,
                },
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("crd_file", type=Path, help="a YAML file of CustomResourceDefinitions")
    parser.add_argument("--source", required=True, help="where the CRD file came from")
    parser.add_argument("--kind", action="append", help="only this kind (repeatable)")
    parser.add_argument("--out", type=Path, default=SCHEMA_DIR, help="output directory")
    args = parser.parse_args(argv)
    kinds = set(args.kind) if args.kind else None
    written = []
    for name, schema in schemas(args.crd_file, kinds, args.source):
        text = json.dumps(schema, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
        (args.out / name).write_text(text, encoding="utf-8")
        written.append(name)
    missing = sorted((kinds or set()) - {n.split("_")[-1].split(".")[0] for n in written})
    for name in written:
        print(name)
    if missing:
        parser.error(f"no served CRD for {', '.join(missing)} in {args.crd_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
