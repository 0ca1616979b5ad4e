"""Writes latest.json, latest.md and PNG charts (matplotlib, Agg) and prints the tables."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

THROUGHPUT = ("hot_sku", "flash_sale", "many_skus")


def write_json(results: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "latest.json"
    tmp = out / "latest.json.tmp"
    tmp.write_text(json.dumps(results, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)
    return path


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _rows(name: str, scenario: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    variants: dict[str, dict[str, Any]] = scenario.get("variants", {})
    if name in THROUGHPUT:
        head = ["variant", "clients", "ops/s", "p50 ms", "p99 ms", "ops", "succeeded", "failed"]
        rows = [
            [
                v,
                _fmt(d.get("clients")),
                _fmt(d.get("ops_per_s")),
                _fmt(d.get("p50_ms"), 2),
                _fmt(d.get("p99_ms"), 2),
                _fmt(d.get("ops")),
                _fmt(d.get("succeeded")),
                _fmt(d.get("failed")),
            ]
            for v, d in variants.items()
        ]
        if name == "flash_sale":
            head += ["wall s", "SQL stmts by losers"]
            for row, d in zip(rows, variants.values(), strict=True):
                row += [_fmt(d.get("wall_s"), 2), _fmt(d.get("statements_from_losers"))]
        if any("cpu_ms_per_op" in d for d in variants.values()):
            head += [
                *("clients CPU ms/op", "MariaDB ms/op", "Redis ms/op", "ceiling ops/s"),
                "row-lock wait",
            ]
            for row, d in zip(rows, variants.values(), strict=True):
                cpu = d.get("cpu_ms_per_op", {})
                share = d.get("row_lock_wait_share")
                row += [
                    _fmt(cpu.get("clients"), 3),
                    _fmt(cpu.get("mariadb"), 3),
                    _fmt(cpu.get("redis"), 3),
                    _fmt(d.get("ceiling_ops_per_s")),
                    "-" if share is None else f"{share:.0%}",
                ]
        return head, rows
    if name == "http":
        head = [
            *("variant", "inst", "conns", "req/s", "p50 ms", "p99 ms", "2xx", "409", "won (db)"),
            *("fn CPU ms/req", "db+redis ms/req", "client ms/req", "ceiling req/s"),
        ]
        rows = []
        for v, d in variants.items():
            cpu = d.get("cpu_ms_per_request", {})
            stores = (cpu.get("mariadb") or 0) + (cpu.get("redis") or 0)
            rows.append(
                [
                    v,
                    _fmt(d.get("instances")),
                    _fmt(d.get("connections")),
                    _fmt(d.get("requests_per_s")),
                    _fmt(d.get("p50_ms"), 1),
                    _fmt(d.get("p99_ms"), 1),
                    _fmt(d.get("ok")),
                    _fmt(d.get("refused")),
                    _fmt(d.get("won_in_mysql")),
                    _fmt(cpu.get("functions"), 2),
                    _fmt(stores, 2),
                    _fmt(cpu.get("client"), 3),
                    _fmt(d.get("ceiling_requests_per_s")),
                ]
            )
        cold = scenario.get("cold_start", {})
        for function, d in cold.items():
            label = f"cold start: {function}, ms to ready (median)"
            rows.append([label, "1", "-", "-", _fmt(d.get("median_ms")), *["-"] * 8])
        return head, rows
    if name == "reconcile":
        head = ["rows", "wall s", "peak RSS MB", "drift seeded", "found", "repaired", "left"]
        rows = [
            [
                _fmt(d.get("rows")),
                _fmt(d.get("wall_s"), 2),
                _fmt(d.get("peak_rss_mb")),
                _fmt(d.get("drift_seeded")),
                _fmt(d.get("drift_found")),
                _fmt(d.get("drift_repaired")),
                _fmt(d.get("drift_left", d.get("drift_detected_by_bench"))),
            ]
            for d in variants.values()
        ]
        return head, rows
    head = ["function", "median ms", "min ms", "max ms", "runs", "x hello"]
    rows = [
        [
            v,
            _fmt(d.get("median_ms")),
            _fmt(d.get("min_ms")),
            _fmt(d.get("max_ms")),
            _fmt(d.get("runs")),
            _fmt(d.get("vs_hello"), 2),
        ]
        for v, d in variants.items()
    ]
    return head, rows


def _target_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, scenario in results.get("scenarios", {}).items():
        for target, d in scenario.get("targets", {}).items():
            rows.append(
                [
                    f"{name}.{target}",
                    _fmt(d.get("value"), 2),
                    f"{d.get('op')} {d.get('required')}",
                    "MET" if d.get("met") else "NOT MET",
                    d.get("what", ""),
                ]
            )
    return rows


def _text_table(head: list[str], rows: Iterable[list[str]]) -> str:
    rows = list(rows)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    for row in rows:
        out.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
    return "\n".join(out)


def _md_table(head: list[str], rows: Iterable[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def _status(scenario: dict[str, Any]) -> str:
    if "error" in scenario:
        return "ERROR: " + str(scenario["error"]).splitlines()[-1][:200]
    if scenario.get("skipped"):
        return f"skipped: {scenario['skipped']}"
    checks = scenario.get("checks", {})
    failed = [k for k, c in checks.items() if not c["ok"]]
    passed = len(checks) - len(failed)
    return f"checks {passed}/{len(checks)} passed" + (
        f"; FAILED: {', '.join(failed)}" if failed else ""
    )


def render(results: dict[str, Any], *, markdown: bool = False) -> str:
    table = _md_table if markdown else _text_table
    m = results.get("machine", {})
    lines = [
        f"{'## ' if markdown else ''}PSI bench {'(quick)' if results.get('quick') else '(full)'}"
        f" started {results.get('started_at')}",
        "",
        f"machine: {m.get('cores')} cores, Python {m.get('python')}, MariaDB"
        f" {m.get('mariadb_version')}, Redis {m.get('redis_version')},"
        f" load average at start {m.get('load_average_at_start')}",
        "",
    ]
    for name, scenario in results.get("scenarios", {}).items():
        lines.append(f"{'### ' if markdown else '== '}{name} ({_status(scenario)})")
        lines.append("")
        if scenario.get("variants"):
            lines.append(table(*_rows(name, scenario)))
            lines.append("")
    targets = _target_rows(results)
    if targets:
        lines.append(f"{'### ' if markdown else '== '}targets")
        lines.append("")
        lines.append(table(["target", "value", "required", "status", "what"], targets))
        lines.append("")
    return "\n".join(lines)


def write_markdown(results: dict[str, Any], out: Path) -> Path:
    path = out / "latest.md"
    path.write_text(render(results, markdown=True))
    return path


# ---------------------------------------------------------------------------- charts


def charts(results: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[Path] = []
    scenarios = results.get("scenarios", {})
    tag = " (quick)" if results.get("quick") else ""

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)

    hot = scenarios.get("hot_sku", {}).get("variants")
    if hot:
        names = list(hot)
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
        rates = [hot[n]["ops_per_s"] or 0 for n in names]
        bars = left.bar(names, rates, color=["#888", "#aaa", "#d62728", "#1f77b4"][: len(names)])
        left.bar_label(bars, labels=[f"{r:,.0f}" for r in rates], fontsize=8)
        left.set_yscale("log")
        left.set_ylabel("orders/s (log)")
        left.set_title(f"hot_sku: one sku, {hot[names[0]]['clients']} clients{tag}")
        p99 = [hot[n]["p99_ms"] or 0 for n in names]
        bars = right.bar(names, p99, color="#ff7f0e")
        right.bar_label(bars, labels=[f"{x:,.1f}" for x in p99], fontsize=8)
        right.set_ylabel("p99 latency ms")
        right.set_title("hot_sku: p99")
        for ax in (left, right):
            ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        save(fig, "hot_sku")

    flash = scenarios.get("flash_sale", {}).get("variants")
    if flash:
        names = list(flash)
        fig, ax = plt.subplots(figsize=(6, 4))
        walls = [flash[n]["wall_s"] or 0 for n in names]
        bars = ax.bar(names, walls, color=["#1f77b4", "#d62728"][: len(names)])
        ax.bar_label(bars, labels=[f"{w:.2f}s" for w in walls])
        params = scenarios["flash_sale"].get("params", {})
        ax.set_ylabel("wall time s")
        ax.set_title(
            f"flash_sale: {params.get('attempts', 0):,} attempts for"
            f" {params.get('units', 0):,} units{tag}"
        )
        save(fig, "flash_sale")

    many = scenarios.get("many_skus", {}).get("variants")
    if many:
        clients = [v["clients"] for v in many.values()]
        fig, ax = plt.subplots(figsize=(6.5, 4))
        ax.plot(clients, [v["ops_per_s"] or 0 for v in many.values()], "o-", label="orders/s")
        ax.set_xscale("log", base=2)
        ax.set_xticks(clients, [str(c) for c in clients])
        ax.set_xlabel("client processes")
        ax.set_ylabel("orders/s")
        twin = ax.twinx()
        twin.plot(clients, [v["p99_ms"] or 0 for v in many.values()], "s--", color="#ff7f0e")
        twin.set_ylabel("p99 ms", color="#ff7f0e")
        ax.set_ylim(bottom=0)
        twin.set_ylim(bottom=0)
        skus = scenarios["many_skus"].get("params", {}).get("skus")
        ax.set_title(f"many_skus: {skus:,} skus, uniform random{tag}")
        save(fig, "many_skus")

    recon = scenarios.get("reconcile", {})
    points = [v for v in recon.get("variants", {}).values() if v.get("wall_s") is not None]
    if points:
        rows = [p["rows"] for p in points]
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        left.plot(rows, [p["wall_s"] for p in points], "o-")
        left.set_xlabel("balances")
        left.set_ylabel("wall time s")
        left.set_title(f"reconcile (repair, 1% drift){tag}")
        right.plot(rows, [p["peak_rss_mb"] for p in points], "o-", color="#2ca02c")
        right.set_xlabel("balances")
        right.set_ylabel("peak RSS MB")
        right.set_title("reconcile: peak RSS")
        for axis in (left, right):
            axis.set_xlim(left=0)
            axis.set_ylim(bottom=0)
        save(fig, "reconcile")

    web = scenarios.get("http", {}).get("variants")
    if web:
        names = list(web)
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4))
        rates = [web[n]["requests_per_s"] or 0 for n in names]
        colors = ["#888" if n == "hello" else "#aaa" if "conditional" in n else "#1f77b4"
                  for n in names]  # fmt: skip
        bars = left.bar(names, rates, color=colors)
        left.bar_label(bars, labels=[f"{r:,.0f}" for r in rates], fontsize=8)
        left.set_ylabel("requests/s")
        left.set_title(f"http: as deployed (gunicorn, wrk){tag}")
        cpu = [web[n].get("cpu_ms_per_request", {}).get("functions") or 0 for n in names]
        bars = right.bar(names, cpu, color="#ff7f0e")
        right.bar_label(bars, labels=[f"{c:.2f}" for c in cpu], fontsize=8)
        right.set_ylabel("function CPU ms per request")
        right.set_title("http: CPU of the function's processes")
        for ax in (left, right):
            ax.tick_params(axis="x", labelrotation=25, labelsize=8)
        save(fig, "http")

    cold = scenarios.get("cold_start", {}).get("variants")
    if cold:
        names = list(cold)
        medians = [cold[n]["median_ms"] or 0 for n in names]
        fig, ax = plt.subplots(figsize=(7, 0.6 * len(names) + 1.5))
        bars = ax.barh(names, medians, color=["#d62728"] + ["#1f77b4"] * (len(names) - 1))
        ax.bar_label(bars, labels=[f"{m:,.0f} ms" for m in medians], fontsize=8)
        if cold.get("hello", {}).get("median_ms"):
            ax.axvline(cold["hello"]["median_ms"] * 1.5, color="#555", ls="--", label="1.5x hello")
            ax.legend(loc="lower right")
        ax.set_xlabel("ms to first 200 of /health/live (median)")
        ax.set_title(f"cold_start{tag}")
        save(fig, "cold_start")
    return made
