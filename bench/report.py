"""Medians, paired ratios, worker spread and targets: bench/results/latest.{json,md,png}."""

import itertools
import json
import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from bench import runner

SERVICE, FLOOR, NATIVE = "service", "floor", "native"
STATUS = {True: "met", False: "**not met**"}  # of a target
# A worker with less than this fraction of an equal share of a load's CPU time (35 % of two)
# left the others to carry it: the figure then says more about where connections landed.
EVEN_FRACTION = 0.7
# The service's targets (docs/performance.md): the lowest ratio of its req/s (rows/s for more
# than 1 row) to a baseline's; its overload p99 against the ASGI floor's; absolute limits.
RATIO_TARGETS = ((1, FLOOR, 0.8), (1, NATIVE, 3.0), (runner.ROWS[-1], NATIVE, 8.0))
OVERLOAD_P99_RATIO, P99_MS, PROBE_MS, SLOW_CLIENT_MS, RSS_MB, READY_S = 1.5, 3, 1000, 250, 100, 2


def group(runs: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    """The runs by their values of `keys`, in the order they first appear."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        groups[tuple(run[key] for key in keys)].append(run)
    return groups


def paired_ratios(runs: list[dict], server: str, baseline: str, key: str = "server") -> dict:
    """Per metric, the median over rounds of server/baseline (by `key`) within a round: both sides
    saw the same moment of a shared machine, which two medians from different moments did not."""
    base = {r["round"]: r for r in runs if r[key] == baseline}
    mine = [r for r in runs if r[key] == server]
    metrics = ("rps", "p50_ms", "p99_ms")
    return {m: statistics.median(r[m] / base[r["round"]][m] for r in mine) for m in metrics}


def shares(worker_cpu: list[float]) -> list[float]:
    total = sum(worker_cpu)
    return [cpu / total for cpu in worker_cpu] if total else []


def is_uneven(run: dict) -> bool:
    """Whether a load with a connection per worker at least went mostly to some workers."""
    parts = shares(run["worker_cpu_s"])
    return 2 <= len(parts) <= run["connections"] and min(parts) < EVEN_FRACTION / len(parts)


def errors(run: dict) -> int:
    return run["http_errors"] + run["unavailable"] + run["socket_errors"]


def medians(runs: list[dict], *extra: str) -> dict[str, float]:
    metrics = ("rps", "rows_per_s", "p50_ms", "p99_ms", *extra)
    return {metric: statistics.median(r[metric] for r in runs) for metric in metrics}


def median_cells(measurements: list[dict]) -> list[dict]:
    """A row per server and shape (route, rows, client): medians over rounds, errors summed,
    ratios to the floor and the native, the lowest and highest worker share, uneven rounds."""
    cells, shapes = [], group(measurements, "endpoint", "rows", "client")
    for (endpoint, rows, client), shape in shapes.items():
        for (server,), runs in group(shape, "server").items():
            cell = {"server": server, "endpoint": endpoint, "rows": rows, "client": client}
            cell |= medians(runs, "client_cores")
            rps = [r["rps"] for r in runs]
            cell["rps_spread"] = (max(rps) - min(rps)) / cell["rps"] if cell["rps"] else 0.0
            requests, failed = sum(r["requests"] for r in runs), sum(map(errors, runs))
            attempts = requests + sum(r["socket_errors"] for r in runs)
            cell |= {"rounds": len(runs), "requests": requests, "errors": failed}
            cell["error_rate"] = failed / attempts if attempts else 0
            parts = [p for r in runs for p in shares(r["worker_cpu_s"])]
            cell["worker_share_min"], cell["worker_share_max"] = min(parts), max(parts)
            cell["uneven_rounds"] = [r["round"] for r in runs if is_uneven(r)]
            cell |= {f"vs_{base}": paired_ratios(shape, server, base) for base in (FLOOR, NATIVE)}
            cells.append(cell)
    return cells


def _uneven_note(cells: list[dict], servers: tuple[str, ...]) -> str:
    """Which loads behind a figure went mostly to one worker."""
    cells = [c for c in cells if c["server"] in servers]
    runs = [
        f"{c['server']} /{c['endpoint']} round {r + 1}" for c in cells for r in c["uneven_rounds"]
    ]
    total = sum(c["rounds"] for c in cells)
    if not runs:
        return f"; even spread over workers in all {total} runs"
    return f"; **uneven spread over workers** in {len(runs)} of {total} runs: {', '.join(runs)}"


def targets(cells: list[dict], servers: dict, scenarios: list[dict]) -> list[dict]:
    """Throughput and latency on the keep-alive cells (how droids and proxies connect), the
    scenarios, memory and start-up; a ratio's figure is the lowest over routes."""
    found = []  # (target, figure, met, detail)
    keep_alive = [c for c in cells if c["client"] == runner.KEEP_ALIVE]
    for rows, base, limit in RATIO_TARGETS:
        shape = [c for c in keep_alive if c["rows"] == rows]
        ratios = {c["endpoint"]: c[f"vs_{base}"]["rps"] for c in shape if c["server"] == SERVICE}
        lowest, unit = min(ratios.values()), "req/s" if rows == 1 else "rows/s"
        name = f"{rows:,}-row {unit} >= {limit:g}x {base}" + (" (ASGI)" if base == FLOOR else "")
        routes = ", ".join(f"/{endpoint} {ratio:.2f}" for endpoint, ratio in ratios.items())
        detail = f"{unit}, per route: {routes}" + _uneven_note(shape, (SERVICE, base))
        found.append((name, lowest, lowest >= limit, detail))
    one = [c for c in keep_alive if c["server"] == SERVICE and c["rows"] == 1]
    p99, p99s = max(c["p99_ms"] for c in one), [f"/{c['endpoint']} {c['p99_ms']:.2f}" for c in one]
    name = f"1-row p99 <= {P99_MS:g} ms at {runner.CONNECTIONS} connections"
    detail = f"ms, median over rounds, per route: {', '.join(p99s)}" + _uneven_note(one, (SERVICE,))
    found.append((name, p99, p99 <= P99_MS, detail))
    by_load = group(scenarios, "scenario", "server")
    runs, slow = by_load["overload", SERVICE], by_load["slow-clients", SERVICE]
    pairs = list(zip(runs, by_load["overload", FLOOR], strict=True))
    overload = f"{runner.OVERLOAD_CONNECTIONS} connections, 1-row"
    http, sockets = sum(r["http_errors"] for r in runs), sum(r["socket_errors"] for r in runs)
    unavailable = sum(r["unavailable"] for r in runs)
    ok = sum(r["requests"] for r in runs) - unavailable - http
    detail = f"answers other than 200 and 503, plus socket errors, over {len(runs)} rounds: "
    detail += f"{http} + {sockets}; {ok:,} answered 200, {unavailable:,} answered 503"
    name = f"{overload}: only 200 or 503, no socket errors"
    found.append((name, http + sockets, http + sockets == 0, detail))
    ratio = statistics.median(r["p99_ms"] / f["p99_ms"] for r, f in pairs)
    tail = "{p50_ms:.1f} / {p99_ms:.1f} / {max_ms:.1f}"
    tails = "; ".join(f"{tail.format_map(r)} against {tail.format_map(f)}" for r, f in pairs)
    detail = "x, median over rounds of the per-round ratio; p50 / p99 / max ms, service against "
    detail += f"floor: {tails}; uneven spread over workers in {sum(map(is_uneven, runs))} of "
    detail += f"{len(runs)} rounds; {sum(r['listen_overflows'] for r in runs):,} connection "
    detail += "attempts dropped from a full accept queue (each retried a second later)"
    name = f"{overload}: p99 <= {OVERLOAD_P99_RATIO:g}x the floor's"
    found.append((name, ratio, ratio <= OVERLOAD_P99_RATIO, detail))
    probes = [r["probes"] for r in runs]
    slowest, failed = max(p["max_ms"] for p in probes), sum(p["failed"] for p in probes)
    detail = f"ms, slowest of {sum(p['count'] for p in probes)} readiness probes (a new connection "
    detail += f"every {runner.PROBE_INTERVAL_S * 1000:g} ms); {failed} failed"
    name = f"{overload}: probes answered within {PROBE_MS / 1000:g} s"
    found.append((name, slowest, slowest <= PROBE_MS and failed == 0, detail))
    silent, heads, stalled = (slow[0][kind] for kind in runner.HELD)
    slowest, failed = max(r["max_ms"] for r in slow), sum(map(errors, slow))
    held = "; ".join(", ".join(f"{n} {s}" for s, n in r["held_at_end"].items()) for r in slow)
    name = f"{silent} silent + {heads} slow-header connections + {stalled} stalled uploads: "
    name += f"every 1-row request 200 within {SLOW_CLIENT_MS:g} ms"
    detail = (
        f"ms, slowest request over {len(slow)} rounds; p99 "
        + ", ".join(f"{r['p99_ms']:.2f}" for r in slow)
        + f" ms; {sum(r['requests'] for r in slow):,} requests, {failed} errors; "
        f"the {silent + heads + stalled} held connections at the end: {held}"
    )
    found.append((name, slowest, slowest < SLOW_CLIENT_MS and failed == 0, detail))
    service, service_cells = servers[SERVICE], [c for c in cells if c["server"] == SERVICE]
    rss, ready = service["worker_rss_mb_idle"], service["ready_s"]
    detail = "MiB, largest worker over rounds, read after start-up once every worker idled; "
    detail += f"after the load: {service['worker_rss_mb_after']:.1f} MiB"
    found.append((f"RSS per worker <= {RSS_MB:g} MiB idle", rss, rss <= RSS_MB, detail))
    detail = f"s, spawn to first 200, median of rounds {service['ready_s_rounds']}"
    found.append((f"start to ready <= {READY_S:g} s", ready, ready <= READY_S, detail))
    failed += sum(c["errors"] for c in service_cells)
    detail = (
        f"{failed} errors (any status >= 400, 503 included, or socket error) in "
        f"{sum(r['requests'] for r in [*service_cells, *slow]):,} requests: every cell and the "
        "slow-client scenario"
    )
    found.append(("0 errors", failed, failed == 0, detail))
    return [{"target": n, "figure": round(f, 3), "met": m, "detail": d} for n, f, m, d in found]


def load_name(run: dict) -> str:
    shape = run.get("scenario") or f"/{run['endpoint']} {run['rows']:,} rows {run['client']}"
    return f"{run['server']} {shape}"


def summarize(meta: dict, raw: dict[str, list[dict]]) -> dict:
    """The run's facts, every figure the report shows, and the raw runs behind them."""
    cells = median_cells(raw["measurements"])
    servers = {
        server: {
            "ready_s": statistics.median(r["ready_s"] for r in rounds),
            "ready_s_rounds": [round(r["ready_s"], 3) for r in rounds],
            "workers": max(len(r["worker_rss_mb_idle"]) for r in rounds),
            "worker_rss_mb_idle": max(max(r["worker_rss_mb_idle"]) for r in rounds),
            "worker_rss_mb_after": max(max(r["worker_rss_mb_after"]) for r in rounds),
        }
        for (server,), rounds in group(raw["server_rounds"], "server").items()
    }
    keys = ("ready_s", "worker_rss_mb_idle")
    for facts, base in itertools.product(servers.values(), (FLOOR, NATIVE)):
        facts[f"vs_{base}"] = {k: facts[k] / servers[base][k] for k in keys}
    uneven = [r for r in [*raw["measurements"], *raw["scenarios"]] if is_uneven(r)]
    return meta | {
        "servers": servers,
        "cells": sorted(cells, key=lambda c: (c["client"], c["endpoint"], c["rows"], c["server"])),
        "targets": targets(cells, servers, raw["scenarios"]),
        "uneven": [
            {"round": r["round"], "load": load_name(r), "rps": r["rps"]}
            | {"shares": [round(p, 3) for p in shares(r["worker_cpu_s"])]}
            for r in uneven
        ],
        "raw": raw,
    }


def table(columns: str, items: Iterable[dict]) -> str:
    """A Markdown table of `name=format | name=format ...`: a name ending in ':' right-aligns its
    column (rule '---:'); a row per item, each format filled from it by str.format_map, with
    {number} its round counted from 1."""
    names, formats = zip(*(c.rpartition("=")[::2] for c in columns.split(" | ")), strict=True)
    rules = ["---:" if name.endswith(":") else "---" for name in names]
    items = [{"number": item["round"] + 1} | item if "round" in item else item for item in items]
    rows = [[f.format_map(item) for f in formats] for item in items]
    lines = [[name.removesuffix(":") for name in names], rules, *rows]
    return "\n".join(f"| {' | '.join(line)} |" for line in lines)


def _percentages(parts: list[float]) -> str:
    return " / ".join(f"{p:.0%}" for p in parts) or "-"


def _workers(cell: dict) -> str:
    rounds = ", ".join(str(r + 1) for r in cell["uneven_rounds"])
    spread = "{worker_share_min:.0%}-{worker_share_max:.0%}".format_map(cell)
    return spread + (f" **uneven** (round {rounds})" if rounds else "")


def _scenario_row(r: dict) -> dict:
    probes, held = r.get("probes"), r.get("held_at_end")
    return r | {
        "probed": "{count} ({failed})".format_map(probes) if probes else "-",
        "slowest": f"{probes['max_ms']:,.2f}" if probes else "-",
        "held": held["open"] if held else "-",
        "parts": _percentages(shares(r["worker_cpu_s"])),
    }


def markdown(results: dict) -> str:
    """Facts of the run, targets, servers, cells, spread, accept queue, scenarios."""
    load, machine, raw, code = results["load"], results["machine"], results["raw"], results["code"]
    cores = [c["client_cores"] for c in results["cells"]]
    loads, held = [*raw["measurements"], *raw["scenarios"]], runner.HELD
    changes = ", ".join(code["uncommitted"])
    bodies = ", ".join(f"{v:,} bytes for {k} row(s)" for k, v in load["body_bytes"].items())
    facts = [
        f"- Run: {results['started']} for {results['elapsed_s']:.0f} s: `{results['command']}`",
        f"- Code: commit {code['commit'][:12]}"
        + (f", with uncommitted changes in {changes}" if changes else "")
        + f"; sources of serve/ and bench/ {code['sources_sha256'][:12]}",
        f"- Machine: {machine['cpus']} CPUs, Python {machine['python']}, "
        f"load average {machine['loadavg_before']} before, {machine['loadavg_after']} after "
        "(other work on the machine shares the cores with the servers and the client)",
        f"- Service settings: {', '.join(f'{k} {v}' for k, v in results['service'].items())}",
        f"- Load: {load['client']}, {load['connections']} connections, "
        f"{load['wrk_threads']} client threads, {load['seconds']} s per cell, "
        f"{load['rounds']} rounds, servers interleaved; figures are medians over rounds",
        f"- The client itself used {statistics.median(cores):,.2f} cores (median over cells, "
        f"max {max(cores):,.2f}) of the {machine['cpus']} the servers share",
        f"- Bodies: {bodies}",
    ]
    uneven = [u | {"parts": _percentages(u["shares"])} for u in results["uneven"]]
    dropped = [r | {"load": load_name(r)} for r in loads if r["listen_overflows"]]
    blocks = [
        "# Benchmark results",
        "\n".join(facts),
        "## Targets",
        "Ratios are paired by round (this server's figure over the baseline's in the same cell "
        "and round, median over rounds) on the keep-alive cells; a ratio target's figure is the "
        "lowest over routes.",
        table(
            "target={target} | figure:={figure:,.3f} | status={status} | detail={detail}",
            (t | {"status": STATUS[t["met"]]} for t in results["targets"]),
        ),
        "## Servers",
        table(
            "server={name} | start-to-ready s:={ready_s:,.2f} "
            "| vs floor:={vs_floor[ready_s]:,.2f} | vs native:={vs_native[ready_s]:,.2f} "
            "| RSS/worker idle MiB:={worker_rss_mb_idle:,.1f} "
            "| after load MiB:={worker_rss_mb_after:,.1f} "
            "| idle vs floor:={vs_floor[worker_rss_mb_idle]:,.2f} "
            "| idle vs native:={vs_native[worker_rss_mb_idle]:,.2f}",
            ({"name": name} | s for name, s in results["servers"].items()),
        ),
        "## Throughput and latency",
        "vs floor and vs native: median over rounds of this server's figure divided by the "
        "baseline's in the same cell and round. Spread: (max - min) / median of req/s over the "
        "rounds, the noise to read ratios with. Workers: the lowest and highest share of the "
        "server's CPU time any worker had during the cell's loads (50 %-50 % is even).",
        table(
            "client={client} | route=/{endpoint} | rows:={rows:,} | server={server} "
            "| req/s:={rps:,.0f} | spread:={rps_spread:.0%} | rows/s:={rows_per_s:,.0f} "
            "| p50 ms:={p50_ms:,.2f} | p99 ms:={p99_ms:,.2f} | errors:={errors} "
            "| req/s vs floor:={vs_floor[rps]:,.2f} | req/s vs native:={vs_native[rps]:,.2f} "
            "| p99 vs floor:={vs_floor[p99_ms]:,.2f} | workers={workers}",
            (c | {"workers": _workers(c)} for c in results["cells"]),
        ),
        "## Spread over workers",
        f"In {len(uneven)} of {len(loads)} loads a worker did less than "
        f"{EVEN_FRACTION / load['workers']:.0%} of the work (its share of the workers' CPU "
        "time), so the others carried the load and the figure understates the server:\n\n"
        + table("round:={number} | load={load} | worker shares={parts} | req/s:={rps:,.0f}", uneven)
        if uneven
        else f"Every one of the {len(loads)} loads was spread evenly enough over the workers.",
        "## Accept queue",
        "Connections dropped because a listening socket's accept queue was full (the kernel's "
        "TcpExt ListenOverflows over the network namespace, so other work on the machine can "
        "add to it); a dropped connection attempt is retried by its client a second later:\n\n"
        + table("round:={number} | load={load} | dropped:={listen_overflows:,}", dropped)
        if dropped
        else "No connection was dropped from a full accept queue during any load.",
        "## Overload and slow clients",
        f"overload: {runner.OVERLOAD_CONNECTIONS} keep-alive connections posting 1-row bodies, on "
        "the service (readiness probed meanwhile) and on the ASGI floor. slow-clients: one "
        f"keep-alive client posting 1-row bodies while {held['silent']} connections stay silent, "
        f"{held['slow']} send a request head one byte at a time and {held['stalled']} uploads "
        "stop after a few bytes of their body.",
        table(
            "round:={number} | server={server} | scenario={scenario} | req/s:={rps:,.0f} "
            "| p50 ms:={p50_ms:,.2f} | p99 ms:={p99_ms:,.2f} | max ms:={max_ms:,.2f} "
            "| 503:={unavailable} | other errors:={http_errors} | socket errors:={socket_errors} "
            "| accept-queue drops:={listen_overflows:,} | probes (failed):={probed} "
            "| slowest probe ms:={slowest} | held open at end:={held} | workers={parts}",
            map(_scenario_row, raw["scenarios"]),
        ),
    ]
    return "\n\n".join(blocks) + "\n"


def draw(results: dict, path: Path) -> None:
    """A panel per client and body size, a bar per server and route: req/s, or rows/s past 1 row."""
    from matplotlib.figure import Figure  # bench/requirements.txt; no pyplot, no display

    colours = {"service": "#1f77b4", "floor": "#7f7f7f", "floor-wsgi": "#c7c7c7"}
    colours["native"] = "#d62728"
    cells, load = results["cells"], results["load"]
    index = {(c["server"], c["endpoint"], c["rows"], c["client"]): c for c in cells}
    clients = sorted({c["client"] for c in cells}, key=lambda c: c != runner.KEEP_ALIVE)
    sizes, endpoints = sorted({c["rows"] for c in cells}), sorted({c["endpoint"] for c in cells})
    servers = [s for s in colours if any(c["server"] == s for c in cells)]
    figure = Figure(figsize=(5.5 * len(sizes), 3.8 * len(clients)))
    axes = figure.subplots(len(clients), len(sizes), squeeze=False)
    width = 0.8 / len(servers)
    for (row, client), (column, rows) in itertools.product(enumerate(clients), enumerate(sizes)):
        ax, metric = axes[row][column], "rps" if rows == 1 else "rows_per_s"
        for i, server in enumerate(servers):
            x = [e + (i - (len(servers) - 1) / 2) * width for e in range(len(endpoints))]
            values = [index[server, e, rows, client][metric] for e in endpoints]
            ax.bar(x, values, width, label=server, color=colours[server])
        ax.set_xticks(range(len(endpoints)), [f"/{e}" for e in endpoints])
        ax.set_ylabel("requests/s" if rows == 1 else "rows/s")
        ax.set_title(f"{client}, {rows:,} row{'s' if rows > 1 else ''} per request")
        ax.grid(axis="y", alpha=0.3)
    figure.legend(*axes[0][0].get_legend_handles_labels(), loc="lower center", ncol=len(servers))
    figure.suptitle(
        f"Throughput, median of {load['rounds']} rounds ({load['client']}, "
        f"{load['connections']} connections, {load['workers']} workers each)"
    )
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    figure.savefig(path, dpi=110)


def publish(out: Path, stem: str, results: object, report: str) -> None:
    """`<stem>.json` (every figure) and `<stem>.md` (the report) in `out`; the report shown."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / f"{stem}.md").write_text(report)
    print(report)
