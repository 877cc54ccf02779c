"""Medians over rounds, ratios to the baselines, the spread over workers, the targets' status,
and the Markdown report."""

import json
import statistics
from collections import defaultdict
from pathlib import Path

from bench.runner import FLOOR, KEEP_ALIVE, OVERLOAD, SERVICE, SLOW_CLIENTS
from bench.scenarios import (
    OVERLOAD_CONNECTIONS,
    PROBE_INTERVAL_S,
    SILENT_CONNECTIONS,
    SLOW_CONNECTIONS,
    STALLED_UPLOADS,
)

NATIVE = "native"
BASELINES = (FLOOR, NATIVE)
METRICS = ("rps", "rows_per_s", "p50_ms", "p99_ms")
# A worker that did less than this fraction of an equal share of a load's CPU time (35 % with
# two workers) left the other to carry it: the load's figure then says more about how the
# connections landed than about the server.
EVEN_FRACTION = 0.7

# The service's targets.
FLOOR_RATIO = 0.8
NATIVE_RATIO = 3.0
NATIVE_ROWS_RATIO = 8.0
P99_MS = 3.0
OVERLOAD_P99_RATIO = 1.5  # the service's p99 against the ASGI floor's, same load and round
PROBE_MS = 1000.0
SLOW_CLIENT_MS = 250.0
RSS_MB = 100.0
READY_S = 2.0


def shares(worker_cpu: list[float]) -> list[float]:
    """Each worker's fraction of the CPU time all workers spent during a load."""
    total = sum(worker_cpu)
    return [cpu / total for cpu in worker_cpu] if total else []


def is_uneven(run: dict) -> bool:
    """Whether a load with at least one connection per worker went mostly to some workers."""
    parts = shares(run["worker_cpu_s"])
    if len(parts) < 2 or run["connections"] < len(parts):
        return False
    return min(parts) < EVEN_FRACTION / len(parts)


def _share_range(runs: list[dict]) -> tuple[float | None, float | None]:
    parts = [p for run in runs for p in shares(run["worker_cpu_s"])]
    return (min(parts), max(parts)) if parts else (None, None)


def median_cells(measurements: list[dict]) -> list[dict]:
    """One row per (server, endpoint, rows, client): medians of each metric, errors summed,
    and the spread over workers (lowest and highest share over rounds, uneven rounds)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for m in measurements:
        groups[m["server"], m["endpoint"], m["rows"], m["client"]].append(m)
    cells = []
    for (server, endpoint, rows, client), runs in groups.items():
        requests = sum(r["requests"] for r in runs)
        socket_errors = sum(r["socket_errors"] for r in runs)
        errors = sum(r["http_errors"] + r["unavailable"] for r in runs) + socket_errors
        cell = {"server": server, "endpoint": endpoint, "rows": rows, "client": client}
        cell |= {k: statistics.median(r[k] for r in runs) for k in METRICS}
        rps = [r["rps"] for r in runs]
        cell["rps_spread"] = (max(rps) - min(rps)) / cell["rps"] if cell["rps"] else 0.0
        cell["client_cores"] = statistics.median(r["client_cores"] for r in runs)
        cell |= {"rounds": len(runs), "requests": requests, "errors": errors}
        cell["error_rate"] = errors / (requests + socket_errors) if requests + socket_errors else 0
        cell["worker_share_min"], cell["worker_share_max"] = _share_range(runs)
        cell["uneven_rounds"] = [r["round"] for r in runs if is_uneven(r)]
        cells.append(cell)
    return cells


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def paired_ratio(
    runs: dict[tuple, dict], server: str, baseline: str, shape: tuple, metric: str
) -> float | None:
    """Median over rounds of server/baseline, each ratio taken within one round.

    A round loads the servers of a cell back to back, so both sides of a ratio see the same
    moment of a shared machine; the median of these pairs resists noise better than the ratio
    of two medians taken from different moments.
    """
    ratios = []
    for (round_index, name, *rest), run in runs.items():
        other = runs.get((round_index, baseline, *shape))
        if name == server and tuple(rest) == shape and other and other[metric]:
            ratios.append(run[metric] / other[metric])
    return statistics.median(ratios) if ratios else None


def index_runs(measurements: list[dict]) -> dict[tuple, dict]:
    return {
        (m["round"], m["server"], m["endpoint"], m["rows"], m["client"]): m for m in measurements
    }


def add_ratios(cells: list[dict], measurements: list[dict]) -> None:
    """Each cell's req/s and latencies against the floor's and the native's, paired by round."""
    runs = index_runs(measurements)
    for cell in cells:
        shape = (cell["endpoint"], cell["rows"], cell["client"])
        for baseline in BASELINES:
            cell[f"vs_{baseline}"] = {
                k: paired_ratio(runs, cell["server"], baseline, shape, k)
                for k in ("rps", "p50_ms", "p99_ms")
            }


def server_summary(server_rounds: list[dict]) -> dict[str, dict]:
    """Start-to-ready (median over rounds) and per-worker RSS idle and after the load (largest
    worker, over rounds)."""
    by_server: dict[str, list[dict]] = defaultdict(list)
    for r in server_rounds:
        by_server[r["server"]].append(r)
    summary = {}
    for server, rounds in by_server.items():
        summary[server] = {
            "ready_s": statistics.median(r["ready_s"] for r in rounds),
            "ready_s_rounds": [round(r["ready_s"], 3) for r in rounds],
            "workers": max(len(r["worker_rss_mb_idle"]) for r in rounds),
            "worker_rss_mb_idle": max(max(r["worker_rss_mb_idle"], default=0) for r in rounds),
            "worker_rss_mb_after": max(max(r["worker_rss_mb_after"], default=0) for r in rounds),
        }
    for facts in summary.values():
        for baseline in BASELINES:
            other = summary.get(baseline)
            facts[f"vs_{baseline}"] = {
                k: _ratio(facts[k], other[k] if other else None)
                for k in ("ready_s", "worker_rss_mb_idle")
            }
    return summary


def _find(cells: list[dict], server: str, client: str, rows: int) -> list[dict]:
    return [
        c for c in cells if c["server"] == server and c["client"] == client and c["rows"] == rows
    ]


def _target(name: str, figure: float | None, met: bool | None, detail: str) -> dict:
    if figure is None:
        return {"target": name, "figure": None, "met": None, "detail": "not measured"}
    return {"target": name, "figure": round(figure, 3), "met": met, "detail": detail}


def _per_endpoint(cells: list[dict], pick) -> str:
    return ", ".join(f"/{c['endpoint']} {pick(c):.2f}" for c in cells)


def _uneven_note(cells: list[dict], servers: tuple[str, ...]) -> str:
    """Which loads behind a figure, of these servers, went mostly to one worker."""
    runs = [
        f"{c['server']} /{c['endpoint']} round {r + 1}"
        for c in cells
        if c["server"] in servers
        for r in c["uneven_rounds"]
    ]
    total = sum(c["rounds"] for c in cells if c["server"] in servers)
    if not runs:
        return f"; even spread over workers in all {total} runs"
    return f"; **uneven spread over workers** in {len(runs)} of {total} runs: {', '.join(runs)}"


def _ratio_target(
    name: str, cells: list[dict], rows: int, baseline: str, limit: float, metric: str
) -> dict:
    """The lowest over endpoints of the service's paired ratio to a baseline (keep-alive)."""
    service = [c for c in _find(cells, SERVICE, KEEP_ALIVE, rows) if c[f"vs_{baseline}"]["rps"]]
    lowest = min((c[f"vs_{baseline}"]["rps"] for c in service), default=None)
    shapes = {(c["endpoint"], c["rows"]) for c in service}
    behind = [
        c for c in cells if c["client"] == KEEP_ALIVE and (c["endpoint"], c["rows"]) in shapes
    ]
    detail = f"{metric}, per route: " + _per_endpoint(service, lambda c: c[f"vs_{baseline}"]["rps"])
    return _target(
        name,
        lowest,
        lowest is not None and lowest >= limit,
        detail + _uneven_note(behind, (SERVICE, baseline)),
    )


def targets(
    cells: list[dict], servers: dict[str, dict], scenario_runs: list[dict], connections: int
) -> list[dict]:
    """The service's targets: throughput and latency on the keep-alive cells (how droids and
    proxies connect), overload and slow clients from the scenarios, memory and start-up."""
    one = _find(cells, SERVICE, KEEP_ALIVE, 1)
    big_rows = max((c["rows"] for c in cells if c["rows"] > 1), default=1000)
    service = servers.get(SERVICE)
    overload = [s for s in scenario_runs if s["scenario"] == OVERLOAD]
    slow = [s for s in scenario_runs if s["scenario"] == SLOW_CLIENTS]
    floor_overload = [s for s in overload if s["server"] == FLOOR]
    overload = [s for s in overload if s["server"] == SERVICE]
    p99 = max((c["p99_ms"] for c in one), default=None)

    rows: list[dict] = [
        _ratio_target(
            f"1-row req/s >= {FLOOR_RATIO:g}x floor (ASGI)", cells, 1, FLOOR, FLOOR_RATIO, "req/s"
        ),
        _ratio_target(
            f"1-row req/s >= {NATIVE_RATIO:g}x native", cells, 1, NATIVE, NATIVE_RATIO, "req/s"
        ),
        _ratio_target(
            f"{big_rows:,}-row rows/s >= {NATIVE_ROWS_RATIO:g}x native",
            cells,
            big_rows,
            NATIVE,
            NATIVE_ROWS_RATIO,
            "rows/s",
        ),
        _target(
            f"1-row p99 <= {P99_MS:g} ms at {connections} connections",
            p99,
            p99 is not None and p99 <= P99_MS,
            "ms, median over rounds, per route: "
            + _per_endpoint(one, lambda c: c["p99_ms"])
            + _uneven_note(one, (SERVICE,)),
        ),
    ]
    rows += _overload_targets(overload, floor_overload)
    rows.append(_slow_client_target(slow))
    rss = service["worker_rss_mb_idle"] if service else None
    rows.append(
        _target(
            f"RSS per worker <= {RSS_MB:g} MiB idle",
            rss,
            rss is not None and rss <= RSS_MB,
            "MiB, largest worker over rounds, read after start-up once every worker idled; "
            f"after the load: {service['worker_rss_mb_after']:.1f} MiB"
            if service
            else "",
        )
    )
    ready = service["ready_s"] if service else None
    rows.append(
        _target(
            f"start to ready <= {READY_S:g} s",
            ready,
            ready is not None and ready <= READY_S,
            f"s, spawn to first 200, median of rounds {service['ready_s_rounds']}"
            if service
            else "",
        )
    )
    service_cells = [c for c in cells if c["server"] == SERVICE]
    errors = sum(c["errors"] for c in service_cells) + sum(_errors(s) for s in slow)
    requests = sum(c["requests"] for c in service_cells) + sum(s["requests"] for s in slow)
    rows.append(
        _target(
            "0 errors",
            errors if requests else None,
            errors == 0,
            f"{errors} errors (any status >= 400, 503 included, or socket error) in {requests:,} "
            "requests: every cell and the slow-client scenario",
        )
    )
    return rows


def _errors(run: dict) -> int:
    return run["http_errors"] + run["unavailable"] + run["socket_errors"]


def _overload_targets(runs: list[dict], floor_runs: list[dict]) -> list[dict]:
    """Only 200 or 503 and no socket error; p99 against the floor's in the same round (median
    of the per-round ratios); every probe answered 200 within PROBE_MS (the slowest probe)."""
    name = f"{OVERLOAD_CONNECTIONS} connections, 1-row"
    tail = f"{name}: p99 <= {OVERLOAD_P99_RATIO:g}x the floor's"
    if not runs:
        return [
            _target(f"{name}: only 200 or 503, no socket errors", None, None, ""),
            _target(tail, None, None, ""),
            _target(f"{name}: probes answered within {PROBE_MS / 1000:g} s", None, None, ""),
        ]
    wrong = sum(r["http_errors"] + r["socket_errors"] for r in runs)
    answered = sum(r["requests"] for r in runs)
    unavailable = sum(r["unavailable"] for r in runs)
    floors = {r["round"]: r for r in floor_runs}
    pairs = [(r, floors[r["round"]]) for r in runs if r["round"] in floors]
    ratio = statistics.median(r["p99_ms"] / f["p99_ms"] for r, f in pairs) if pairs else None
    probes = [r["probes"] for r in runs]
    slowest = max(p["max_ms"] for p in probes)
    failed = sum(p["failed"] for p in probes)
    count = sum(p["count"] for p in probes)
    uneven = sum(is_uneven(r) for r in runs)
    return [
        _target(
            f"{name}: only 200 or 503, no socket errors",
            wrong,
            wrong == 0,
            f"answers other than 200 and 503, plus socket errors, over {len(runs)} rounds: "
            f"{sum(r['http_errors'] for r in runs)} + {sum(r['socket_errors'] for r in runs)}; "
            f"{answered - unavailable - sum(r['http_errors'] for r in runs):,} answered 200, "
            f"{unavailable:,} answered 503",
        ),
        _target(
            tail,
            ratio,
            ratio is not None and ratio <= OVERLOAD_P99_RATIO,
            "x, median over rounds of the per-round ratio; p50 / p99 / max ms, service against "
            "floor: "
            + "; ".join(
                f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f} / {r['max_ms']:.1f} against "
                f"{f['p50_ms']:.1f} / {f['p99_ms']:.1f} / {f['max_ms']:.1f}"
                for r, f in pairs
            )
            + f"; uneven spread over workers in {uneven} of {len(runs)} rounds; "
            f"{sum(r['listen_overflows'] for r in runs):,} connection attempts dropped from a "
            "full accept queue (each retried a second later)",
        ),
        _target(
            f"{name}: probes answered within {PROBE_MS / 1000:g} s",
            slowest,
            slowest <= PROBE_MS and failed == 0,
            f"ms, slowest of {count} readiness probes (a new connection every "
            f"{PROBE_INTERVAL_S * 1000:g} ms); {failed} failed",
        ),
    ]


def _slow_client_target(runs: list[dict]) -> dict:
    """The normal client's slowest request over rounds, and no failed request."""
    name = (
        f"{SILENT_CONNECTIONS} silent + {SLOW_CONNECTIONS} slow-header connections + "
        f"{STALLED_UPLOADS} stalled uploads: every 1-row request 200 within {SLOW_CLIENT_MS:g} ms"
    )
    if not runs:
        return _target(name, None, None, "")
    slowest = max(r["max_ms"] for r in runs)
    errors = sum(_errors(r) for r in runs)
    held = "; ".join(
        ", ".join(f"{n} {state}" for state, n in r["held_at_end"].items()) for r in runs
    )
    return _target(
        name,
        slowest,
        slowest < SLOW_CLIENT_MS and errors == 0,
        f"ms, slowest request over {len(runs)} rounds; p99 "
        + ", ".join(f"{r['p99_ms']:.2f}" for r in runs)
        + f" ms; {sum(r['requests'] for r in runs):,} requests, {errors} errors; "
        f"the {SILENT_CONNECTIONS + SLOW_CONNECTIONS + STALLED_UPLOADS} held connections at "
        f"the end: {held}",
    )


def _load_name(run: dict) -> str:
    """A cell's shape, or a scenario's server and name."""
    if "scenario" in run:
        return f"{run['server']} {run['scenario']}"
    return f"{run['server']} /{run['endpoint']} {run['rows']:,} rows {run['client']}"


def uneven_runs(measurements: list[dict], scenario_runs: list[dict]) -> list[dict]:
    """Every load that went mostly to some workers, with each worker's share."""
    return [
        {
            "round": run["round"],
            "load": _load_name(run),
            "shares": [round(p, 3) for p in shares(run["worker_cpu_s"])],
            "rps": run["rps"],
        }
        for run in [*measurements, *scenario_runs]
        if is_uneven(run)
    ]


DERIVED = ("servers", "cells", "targets", "uneven", "raw")


def summarize(meta: dict, raw: dict) -> dict:
    cells = median_cells(raw["measurements"])
    add_ratios(cells, raw["measurements"])
    servers = server_summary(raw["server_rounds"])
    return {
        **meta,
        "servers": servers,
        "cells": sorted(cells, key=lambda c: (c["client"], c["endpoint"], c["rows"], c["server"])),
        "targets": targets(cells, servers, raw["scenarios"], meta["load"]["connections"]),
        "uneven": uneven_runs(raw["measurements"], raw["scenarios"]),
        "raw": raw,
    }


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _status(met: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "not measured"}[met]


def _code_line(before: dict, after: dict) -> str:
    line = f"- Code: commit {before['commit'][:12]}"
    if before["uncommitted"]:
        line += f", with uncommitted changes in {', '.join(before['uncommitted'])}"
    line += f"; sources of serve/ and bench/ {before['sources_sha256'][:12]}"
    if after["sources_sha256"] != before["sources_sha256"]:
        return line + f", **changed during the run** (to {after['sources_sha256'][:12]})"
    return line + ", unchanged during the run"


def _share_text(low: float | None, high: float | None, uneven: list[int]) -> str:
    if low is None or high is None:
        return "-"
    text = f"{low:.0%}-{high:.0%}"
    return text + (f" **uneven** (round {', '.join(str(r + 1) for r in uneven)})" if uneven else "")


def markdown(results: dict) -> str:
    """The human-readable report: targets first, then servers, cells, spread and scenarios."""
    load, machine = results["load"], results["machine"]
    cores = [c["client_cores"] for c in results["cells"]]
    client_cores = statistics.median(cores) if cores else None
    lines = [
        "# Benchmark results",
        "",
        f"- Run: {results['started']} for {results['elapsed_s']:.0f} s: `{results['command']}`",
        _code_line(results["code"], results["code_after"]),
        f"- Machine: {machine['cpus']} CPUs, Python {machine['python']}, "
        f"load average {machine['loadavg_before']} before, {machine['loadavg_after']} after "
        "(other work on the machine shares the cores with the servers and the client)",
    ]
    for name, config in results["gunicorn"].items():
        threads = f", {config['threads']} threads" if config["worker_class"] == "gthread" else ""
        lines.append(
            f"- {name}: gunicorn `{config['worker_class']}`, {config['workers']} workers{threads}, "
            f"keep-alive {config['keepalive']} s"
        )
    lines += [
        f"- Service settings: {', '.join(f'{k} {v}' for k, v in results['service'].items())}",
        f"- Load: {load['client']}, {load['connections']} connections, "
        f"{load['wrk_threads']} client threads, {load['seconds']} s per cell, "
        f"{load['rounds']} rounds, servers interleaved; figures are medians over rounds",
        f"- The client itself used {_f(client_cores)} cores (median over cells, max "
        f"{_f(max(cores, default=None))}) of the {machine['cpus']} the servers share",
        "- Bodies: "
        + ", ".join(f"{v:,} bytes for {k} row(s)" for k, v in load["body_bytes"].items()),
        "",
        "## Targets",
        "",
        "Ratios are paired by round (this server's figure over the baseline's in the same cell "
        "and round, median over rounds) on the keep-alive cells; a ratio target's figure is the "
        "lowest over routes.",
        "",
        "| target | figure | status | detail |",
        "| --- | ---: | --- | --- |",
    ]
    for t in results["targets"]:
        lines.append(
            f"| {t['target']} | {_f(t['figure'], 3)} | {_status(t['met'])} | {t['detail']} |"
        )
    lines += [
        "",
        "## Servers",
        "",
        "| server | start-to-ready s | vs floor | vs native | RSS/worker idle MiB "
        "| after load MiB | idle vs floor | idle vs native |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, s in results["servers"].items():
        lines.append(
            f"| {name} | {_f(s['ready_s'])} | {_f(s['vs_floor']['ready_s'])} "
            f"| {_f(s['vs_native']['ready_s'])} | {_f(s['worker_rss_mb_idle'], 1)} "
            f"| {_f(s['worker_rss_mb_after'], 1)} | {_f(s['vs_floor']['worker_rss_mb_idle'])} "
            f"| {_f(s['vs_native']['worker_rss_mb_idle'])} |"
        )
    lines += [
        "",
        "## Throughput and latency",
        "",
        "vs floor and vs native: median over rounds of this server's figure divided by the "
        "baseline's in the same cell and round. Spread: (max - min) / median of req/s over the "
        "rounds, the noise to read ratios with. Workers: the lowest and highest share of the "
        "server's CPU time any worker had during the cell's loads (50 %-50 % is even).",
        "",
        "| client | route | rows | server | req/s | spread | rows/s | p50 ms | p99 ms | errors "
        "| req/s vs floor | req/s vs native | p99 vs floor | workers |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| --- |",
    ]
    for c in results["cells"]:
        lines.append(
            f"| {c['client']} | /{c['endpoint']} | {c['rows']:,} | {c['server']} "
            f"| {_f(c['rps'], 0)} | {c['rps_spread']:.0%} | {_f(c['rows_per_s'], 0)} "
            f"| {_f(c['p50_ms'])} | {_f(c['p99_ms'])} | {c['errors']} "
            f"| {_f(c['vs_floor']['rps'])} | {_f(c['vs_native']['rps'])} "
            f"| {_f(c['vs_floor']['p99_ms'])} "
            f"| {_share_text(c['worker_share_min'], c['worker_share_max'], c['uneven_rounds'])} |"
        )
    lines += ["", "## Spread over workers", ""]
    uneven = results["uneven"]
    loads = len(results["raw"]["measurements"]) + len(results["raw"]["scenarios"])
    if uneven:
        lines += [
            f"In {len(uneven)} of {loads} loads a worker did less than "
            f"{EVEN_FRACTION / results['load']['workers']:.0%} of the work (its share of the "
            "workers' CPU time), so the others carried the load and the figure understates "
            "the server:",
            "",
            "| round | load | worker shares | req/s |",
            "| ---: | --- | --- | ---: |",
        ]
        for u in uneven:
            parts = " / ".join(f"{p:.0%}" for p in u["shares"])
            lines.append(f"| {u['round'] + 1} | {u['load']} | {parts} | {_f(u['rps'], 0)} |")
    else:
        lines.append(f"Every one of the {loads} loads was spread evenly enough over the workers.")
    lines += _accept_queue_lines([*results["raw"]["measurements"], *results["raw"]["scenarios"]])
    lines += _scenario_lines(results["raw"]["scenarios"])
    return "\n".join(lines) + "\n"


def _accept_queue_lines(runs: list[dict]) -> list[str]:
    """Loads during which the kernel dropped connections from a full accept queue."""
    dropped = [r for r in runs if r["listen_overflows"]]
    lines = ["", "## Accept queue", ""]
    if not dropped:
        return [*lines, "No connection was dropped from a full accept queue during any load."]
    lines += [
        "Connections dropped because a listening socket's accept queue was full (the kernel's "
        "TcpExt ListenOverflows over the network namespace, so other work on the machine can "
        "add to it); a dropped connection attempt is retried by its client a second later:",
        "",
        "| round | load | dropped |",
        "| ---: | --- | ---: |",
    ]
    lines += [
        f"| {r['round'] + 1} | {_load_name(r)} | {r['listen_overflows']:,} |" for r in dropped
    ]
    return lines


def _scenario_lines(runs: list[dict]) -> list[str]:
    if not runs:
        return []
    lines = [
        "",
        "## Overload and slow clients",
        "",
        f"overload: {OVERLOAD_CONNECTIONS} keep-alive connections posting 1-row bodies, on the "
        "service (readiness probed meanwhile) and on the ASGI floor. slow-clients: one "
        f"keep-alive client posting 1-row bodies while {SILENT_CONNECTIONS} connections stay "
        f"silent, {SLOW_CONNECTIONS} send a request head one byte at a time and "
        f"{STALLED_UPLOADS} uploads stop after a few bytes of their body.",
        "",
        "| round | server | scenario | req/s | p50 ms | p99 ms | max ms | 503 | other errors "
        "| socket errors | accept-queue drops | probes (failed) | slowest probe ms "
        "| held open at end | workers |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | --- |",
    ]
    for r in runs:
        probes, slowest_probe = "-", "-"
        if "probes" in r:
            probes = f"{r['probes']['count']} ({r['probes']['failed']})"
            slowest_probe = _f(r["probes"]["max_ms"])
        parts = " / ".join(f"{p:.0%}" for p in shares(r["worker_cpu_s"]))
        lines.append(
            f"| {r['round'] + 1} | {r['server']} | {r['scenario']} | {_f(r['rps'], 0)} "
            f"| {_f(r['p50_ms'])} "
            f"| {_f(r['p99_ms'])} | {_f(r['max_ms'])} | {r['unavailable']} | {r['http_errors']} "
            f"| {r['socket_errors']} | {r['listen_overflows']:,} | {probes} | {slowest_probe} "
            f"| {r['held_at_end']['open'] if 'held_at_end' in r else '-'} | {parts or '-'} |"
        )
    return lines


def publish(out: Path, stem: str, results: object, report: str) -> None:
    """`<stem>.json` (every figure) and `<stem>.md` (the report) in `out`, and the report shown."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / f"{stem}.md").write_text(report)
    print(report)
