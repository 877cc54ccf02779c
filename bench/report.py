"""Medians over rounds, ratios to the baselines, the targets' status, and the Markdown report."""

import statistics
from collections import defaultdict

SERVICE, SYNC, FLOOR, NATIVE = "service", "service-sync", "floor", "native"
KEEP_ALIVE = "keep-alive"
METRICS = ("rps", "rows_per_s", "p50_ms", "p99_ms")


def median_cells(measurements: list[dict]) -> list[dict]:
    """One row per (server, endpoint, rows, client): medians of each metric, errors summed."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for m in measurements:
        groups[m["server"], m["endpoint"], m["rows"], m["client"]].append(m)
    cells = []
    for (server, endpoint, rows, client), runs in groups.items():
        requests = sum(r["requests"] for r in runs)
        socket_errors = sum(r["socket_errors"] for r in runs)
        errors = sum(r["http_errors"] for r in runs) + socket_errors
        cell = {"server": server, "endpoint": endpoint, "rows": rows, "client": client}
        cell |= {k: statistics.median(r[k] for r in runs) for k in METRICS}
        rps = [r["rps"] for r in runs]
        cell["rps_spread"] = (max(rps) - min(rps)) / cell["rps"] if cell["rps"] else 0.0
        cell["client_cores"] = statistics.median(r.get("client_cores", 0.0) for r in runs)
        cell |= {"rounds": len(runs), "requests": requests, "errors": errors}
        cell["error_rate"] = errors / (requests + socket_errors) if requests + socket_errors else 0
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
        for baseline in (FLOOR, NATIVE):
            cell[f"vs_{baseline}"] = {
                k: paired_ratio(runs, cell["server"], baseline, shape, k)
                for k in ("rps", "p50_ms", "p99_ms")
            }


def server_summary(server_rounds: list[dict]) -> dict[str, dict]:
    """Start-to-ready (median over rounds) and per-worker RSS (largest worker, over rounds)."""
    by_server: dict[str, list[dict]] = defaultdict(list)
    for r in server_rounds:
        by_server[r["server"]].append(r)
    summary = {}
    for server, rounds in by_server.items():
        largest = [max(r["worker_rss_mb"], default=0.0) for r in rounds]
        summary[server] = {
            "ready_s": statistics.median(r["ready_s"] for r in rounds),
            "ready_s_rounds": [round(r["ready_s"], 3) for r in rounds],
            "workers": max(len(r["worker_rss_mb"]) for r in rounds),
            "worker_rss_mb": statistics.median(largest),
            "worker_rss_mb_max": max(largest),
        }
    for facts in summary.values():
        for baseline in (FLOOR, NATIVE):
            other = summary.get(baseline)
            facts[f"vs_{baseline}"] = {
                k: _ratio(facts[k], other[k] if other else None)
                for k in ("ready_s", "worker_rss_mb")
            }
    return summary


def _find(cells: list[dict], server: str, client: str, rows: int) -> list[dict]:
    return [
        c for c in cells if c["server"] == server and c["client"] == client and c["rows"] == rows
    ]


def _target(name: str, figure: float | None, limit: float, at_least: bool, detail: str) -> dict:
    if figure is None:
        return {"target": name, "figure": None, "met": None, "detail": "not measured"}
    met = figure >= limit if at_least else figure <= limit
    return {"target": name, "figure": round(figure, 3), "met": met, "detail": detail}


def _per_endpoint(cells: list[dict], pick) -> str:
    return ", ".join(f"/{c['endpoint']} {pick(c):.2f}" for c in cells)


def targets(cells: list[dict], servers: dict[str, dict], connections: int) -> list[dict]:
    """The service's targets, judged on the keep-alive cells (how droids and proxies connect)."""
    one = [c for c in _find(cells, SERVICE, KEEP_ALIVE, 1) if c["vs_floor"]["rps"]]
    big_rows = max((c["rows"] for c in cells if c["rows"] > 1), default=None)
    big = _find(cells, SERVICE, KEEP_ALIVE, big_rows) if big_rows else []
    with_native = [c for c in one if c["vs_native"]["rps"]]
    big = [c for c in big if c["vs_native"]["rps"]]
    service = servers.get(SERVICE)
    service_cells = [c for c in cells if c["server"] == SERVICE]
    errors = sum(c["errors"] for c in service_cells)
    requests = sum(c["requests"] for c in service_cells)

    def lowest(group: list[dict], baseline: str) -> float | None:
        return min((c[f"vs_{baseline}"]["rps"] for c in group), default=None)

    return [
        _target(
            "1-row req/s >= 0.9x floor",
            lowest(one, FLOOR),
            0.9,
            True,
            _per_endpoint(one, lambda c: c["vs_floor"]["rps"]),
        ),
        _target(
            "1-row req/s >= 1.5x native",
            lowest(with_native, NATIVE),
            1.5,
            True,
            _per_endpoint(with_native, lambda c: c["vs_native"]["rps"]),
        ),
        _target(
            f"{big_rows or 'many'}-row rows/s >= 5x native",
            lowest(big, NATIVE),
            5.0,
            True,
            _per_endpoint(big, lambda c: c["vs_native"]["rps"]),
        ),
        _target(
            f"1-row p99 <= 5 ms at {connections} connections",
            max((c["p99_ms"] for c in one), default=None),
            5.0,
            False,
            _per_endpoint(one, lambda c: c["p99_ms"]) + " ms",
        ),
        _target(
            "per-worker RSS <= 100 MB",
            service["worker_rss_mb_max"] if service else None,
            100.0,
            False,
            "largest worker over all rounds, MiB",
        ),
        _target(
            "start-to-ready <= 2 s",
            service["ready_s"] if service else None,
            2.0,
            False,
            f"median of rounds {service['ready_s_rounds'] if service else []} s",
        ),
        _target(
            "error rate 0",
            errors / requests if requests else None,
            0.0,
            False,
            f"{errors} errors in {requests} requests",
        ),
    ]


def sync_vs_gthread(cells: list[dict], measurements: list[dict]) -> dict:
    """The service under sync workers against gthread, cell by cell (ratio > 1: sync is faster)."""
    index = {(c["server"], c["endpoint"], c["rows"], c["client"]): c for c in cells}
    runs = index_runs(measurements)
    pairs = []
    for (server, endpoint, rows, client), gthread in sorted(index.items()):
        sync = index.get((SYNC, endpoint, rows, client))
        if server != SERVICE or sync is None:
            continue
        pairs.append(
            {
                "endpoint": endpoint,
                "rows": rows,
                "client": client,
                "gthread_rps": gthread["rps"],
                "sync_rps": sync["rps"],
                "sync_vs_gthread": paired_ratio(
                    runs, SYNC, SERVICE, (endpoint, rows, client), "rps"
                ),
                "gthread_p99_ms": gthread["p99_ms"],
                "sync_p99_ms": sync["p99_ms"],
                "gthread_errors": gthread["errors"],
                "sync_errors": sync["errors"],
            }
        )
    by_shape: dict[str, list[float]] = defaultdict(list)
    for p in pairs:
        plural = "s" if p["rows"] != 1 else ""
        by_shape[f"{p['client']}, {p['rows']} row{plural}"].append(p["sync_vs_gthread"])
    summary = {shape: statistics.geometric_mean(r) for shape, r in by_shape.items()}
    return {"cells": pairs, "geometric_mean_by_shape": summary}


DERIVED = ("servers", "cells", "targets", "sync_vs_gthread", "raw")


def summarize(meta: dict, raw: dict) -> dict:
    cells = median_cells(raw["measurements"])
    add_ratios(cells, raw["measurements"])
    servers = server_summary(raw["server_rounds"])
    return {
        **meta,
        "servers": servers,
        "cells": sorted(cells, key=lambda c: (c["client"], c["endpoint"], c["rows"], c["server"])),
        "targets": targets(cells, servers, meta["load"]["connections"]),
        "sync_vs_gthread": sync_vs_gthread(cells, raw["measurements"]),
        "raw": raw,
    }


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _status(met: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "not measured"}[met]


def markdown(results: dict) -> str:
    """The human-readable report: targets first, then servers, cells, and sync against gthread."""
    load, config = results["load"], results["gunicorn"]
    cores = [c["client_cores"] for c in results["cells"]]
    bodies = load["body_bytes"]
    client_cores = statistics.median(cores) if cores else None
    lines = [
        "# Benchmark results",
        "",
        f"- Run: {results['started']} for {results['elapsed_s']:.0f} s: `{results['command']}`",
        f"- Machine: {results['machine']['cpus']} CPUs, Python {results['machine']['python']}, "
        f"load average {results['machine']['loadavg_before']} before, "
        f"{results['machine']['loadavg_after']} after",
        f"- gunicorn (serve/gunicorn.conf.py): worker class {config['worker_class']}, "
        f"{config['workers']} workers, {config['threads']} threads, "
        f"keep-alive {config['keepalive']} s; the same for floor and native",
        f"- Load: {load['client']}, {load['connections']} connections, "
        f"{load['wrk_threads']} client threads, {load['seconds']} s per cell, "
        f"{load['rounds']} rounds, servers interleaved; figures are medians over rounds",
        f"- The client itself used {_f(client_cores)} cores (median over cells, max "
        f"{_f(max(cores, default=None))}) of the {results['machine']['cpus']} the servers share",
        "- Bodies: " + ", ".join(f"{v:,} bytes for {k} row(s)" for k, v in bodies.items()),
        "",
        "## Targets",
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
        "| server | start-to-ready s | vs floor | vs native "
        "| RSS/worker MiB (max) | vs floor | vs native |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, s in results["servers"].items():
        lines.append(
            f"| {name} | {_f(s['ready_s'])} | {_f(s['vs_floor']['ready_s'])} "
            f"| {_f(s['vs_native']['ready_s'])} | {_f(s['worker_rss_mb_max'], 1)} "
            f"| {_f(s['vs_floor']['worker_rss_mb'])} | {_f(s['vs_native']['worker_rss_mb'])} |"
        )
    lines += [
        "",
        "## Throughput and latency",
        "",
        "vs floor and vs native: median over rounds of this server's figure divided by the "
        "baseline's in the same cell and round; "
        "spread is (max - min) / median of req/s over the rounds: the noise to read ratios with.",
        "",
        "| client | route | rows | server | req/s | spread | rows/s | p50 ms | p99 ms | errors "
        "| req/s vs floor | req/s vs native | p99 vs floor | p99 vs native |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: |",
    ]
    for c in results["cells"]:
        lines.append(
            f"| {c['client']} | /{c['endpoint']} | {c['rows']:,} | {c['server']} "
            f"| {_f(c['rps'], 0)} | {c['rps_spread']:.0%} | {_f(c['rows_per_s'], 0)} "
            f"| {_f(c['p50_ms'])} "
            f"| {_f(c['p99_ms'])} | {c['errors']} | {_f(c['vs_floor']['rps'])} "
            f"| {_f(c['vs_native']['rps'])} | {_f(c['vs_floor']['p99_ms'])} "
            f"| {_f(c['vs_native']['p99_ms'])} |"
        )
    comparison = results["sync_vs_gthread"]
    if comparison["cells"]:
        lines += [
            "",
            "## Worker class: sync against gthread (the service)",
            "",
            "| client | route | rows | gthread req/s | sync req/s | sync/gthread "
            "| gthread p99 ms | sync p99 ms |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for p in comparison["cells"]:
            lines.append(
                f"| {p['client']} | /{p['endpoint']} | {p['rows']:,} | {_f(p['gthread_rps'], 0)} "
                f"| {_f(p['sync_rps'], 0)} | {_f(p['sync_vs_gthread'])} "
                f"| {_f(p['gthread_p99_ms'])} | {_f(p['sync_p99_ms'])} |"
            )
        lines += ["", "sync/gthread is paired by round. Geometric mean of sync/gthread req/s:", ""]
        for shape, ratio in comparison["geometric_mean_by_shape"].items():
            lines.append(f"- {shape}: {ratio:.2f}")
    return "\n".join(lines) + "\n"
