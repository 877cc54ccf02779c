"""The throughput chart: one panel per client kind and body size, a bar per server and route."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI

import matplotlib.pyplot as plt

SERVER_COLOURS = {
    "service": "#1f77b4",
    "floor": "#7f7f7f",
    "floor-wsgi": "#c7c7c7",
    "native": "#d62728",
}


def draw(results: dict, path: Path) -> None:
    """Writes a PNG: requests/s for one-row bodies, rows/s for larger ones (medians over rounds)."""
    cells = results["cells"]
    clients = sorted({c["client"] for c in cells}, key=lambda c: c != "keep-alive")
    sizes = sorted({c["rows"] for c in cells})
    endpoints = sorted({c["endpoint"] for c in cells})
    servers = [s for s in SERVER_COLOURS if any(c["server"] == s for c in cells)]
    index = {(c["server"], c["endpoint"], c["rows"], c["client"]): c for c in cells}
    figure, axes = plt.subplots(
        len(clients), len(sizes), figsize=(5.5 * len(sizes), 3.8 * len(clients)), squeeze=False
    )
    width = 0.8 / len(servers)
    for row, client in enumerate(clients):
        for column, rows in enumerate(sizes):
            ax = axes[row][column]
            metric = "rps" if rows == 1 else "rows_per_s"
            for i, server in enumerate(servers):
                values = [
                    index[server, e, rows, client][metric]
                    if (server, e, rows, client) in index
                    else 0.0
                    for e in endpoints
                ]
                positions = [
                    x + (i - (len(servers) - 1) / 2) * width for x in range(len(endpoints))
                ]
                ax.bar(positions, values, width, label=server, color=SERVER_COLOURS[server])
            ax.set_xticks(range(len(endpoints)), [f"/{e}" for e in endpoints])
            ax.set_ylabel("requests/s" if rows == 1 else "rows/s")
            ax.set_title(f"{client}, {rows:,} row{'s' if rows > 1 else ''} per request")
            ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(servers))
    load = results["load"]
    figure.suptitle(
        f"Throughput, median of {load['rounds']} rounds ({load['client']}, "
        f"{load['connections']} connections, {load['workers']} workers each)"
    )
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
