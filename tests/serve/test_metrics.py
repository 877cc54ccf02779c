"""serve/metrics.py without a server or a clock: buckets, snapshots, the merge, the shared folder,
the retirement of a dead worker's totals (and its race with a scrape), and the exposition as a
scraper parses it."""

import itertools
import math
import os
import time
from collections.abc import Collection, Sequence
from pathlib import Path

import msgspec
import numpy as np
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from serve import metrics
from serve.metrics import (
    CONFIDENCE_BUCKETS,
    EXIT_REASONS,
    FAMILIES,
    HISTOGRAMS,
    LAST_PREDICTION,
    RETIRED_FILE,
    RETIRED_IDS_KEPT,
    ROW_BUCKETS,
    SHED,
    VALUES,
    WORKER_EXITS,
    Histogram,
    Metrics,
    MetricsFolder,
    Snapshot,
    _merge,
    exposition,
)

LABELS = ("blue", "green", "yellow")
MODEL = ("sklearn", "3", "ab" * 32)
# What Prometheus 2 asks a target for.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
# The names, types and labels the dashboard and the alerts (deploy/monitoring/) query.
CONTRACT = {
    "crystal_requests": ("counter", ("protocol", "endpoint", "method", "model", "status")),
    "crystal_request_seconds": ("counter", ("protocol", "endpoint", "method", "model", "status")),
    "crystal_requests_shed": ("counter", ()),
    "crystal_unauthenticated_requests": ("counter", ("protocol", "reason")),
    "crystal_predictions": ("counter", ("model", "label")),
    "crystal_worker_exits": ("counter", ("reason",)),
    "crystal_last_prediction_timestamp_seconds": ("gauge", ("model",)),
    "crystal_request_duration_seconds": ("histogram", ("endpoint",)),
    "crystal_inference_duration_seconds": ("histogram", ("model",)),
    "crystal_request_rows": ("histogram", ("model",)),
    "crystal_prediction_confidence": ("histogram", ("model",)),
    "crystal_requests_in_flight": ("gauge", ()),
    "crystal_worker_resident_memory_bytes": ("gauge", ("worker",)),
    "crystal_worker_cpu_seconds": ("counter", ("worker",)),
    "crystal_model_info": ("gauge", ("model", "version", "source_sha256")),
}
# The families of work done (and when it was last done): no scrape may ever see one go down.
WORK_DONE = {definition.name for definition in (*VALUES, *HISTOGRAMS)}

Key = tuple[str, tuple[tuple[str, str], ...]]
SHED_TOTAL: Key = ("crystal_requests_shed_total", ())


def key(name: str, **labels: str) -> Key:
    """A sample's name and labels, as `samples` keys them."""
    return name, tuple(sorted(labels.items()))


def samples(text: str, families: Collection[str] | None = None) -> dict[Key, float]:
    """Every sample of a text-format exposition (of `families` only, when given), as a scraper
    parses it."""
    return {
        key(sample.name, **sample.labels): sample.value
        for family in text_string_to_metric_families(text)
        if families is None or family.name in families
        for sample in family.samples
    }


def scrape(folder: MetricsFolder) -> str:
    """What `/metrics` answers over `folder`, in the text format."""
    return exposition(*folder.read_all())[0].decode()


def exits(parsed: dict[Key, float]) -> dict[str, float]:
    return {
        dict(labels)["reason"]: value
        for (name, labels), value in parsed.items()
        if name == "crystal_worker_exits_total"
    }


def live_workers(parsed: dict[Key, float]) -> list[str]:
    """The workers a scrape reports live gauges for."""
    return sorted(
        dict(labels)["worker"]
        for (name, labels), _ in parsed.items()
        if name == "crystal_worker_resident_memory_bytes"
    )


def recorded(
    pid: int, requests: int = 0, shed: int = 0, batches: Sequence[int] = (), in_flight: int = 0
) -> Snapshot:
    """The snapshot worker `pid` publishes after this traffic: `requests` answered, `shed`
    refused, and a prediction per batch size in `batches`."""
    recorder = Metrics(models=[MODEL])
    for _ in range(requests):
        recorder.request("droid", "/sklearn", "POST", "sklearn", "200", 0.003)
    for _ in range(shed):
        recorder.shed()
        recorder.unauthenticated("v2", "missing")
    for rows in batches:
        best = np.arange(rows) % len(LABELS)
        recorder.prediction("sklearn", 0.001, LABELS, best, np.full(rows, 0.9))
    recorder.in_flight = in_flight
    return msgspec.structs.replace(recorder.snapshot(), pid=pid, worker_id=f"{pid}-1")


def busy_folder(path: Path) -> MetricsFolder:
    """A folder where every family has samples: two live workers and a retired one."""
    folder = MetricsFolder(path)
    for pid in (101, 102, 103):
        folder.write(recorded(pid, requests=2, shed=1, batches=[1, 3], in_flight=1))
    folder.retire(101, "crash")
    return folder


def counter_values(snapshot: Snapshot) -> dict[str, dict[tuple[str, ...], float]]:
    return {
        name: {tuple(labels): value for labels, value in series}
        for name, series in snapshot.counters.items()
    }


def histogram_values(snapshot: Snapshot) -> dict[str, dict[tuple[str, ...], tuple[list, float]]]:
    return {
        name: {tuple(labels): (list(counts), total) for labels, counts, total in series}
        for name, series in snapshot.histograms.items()
    }


def one_in(bucket_count: int, *indices: int) -> list[int]:
    """Per-bucket counts (not cumulative, +Inf last) of one value in each bucket of `indices`."""
    counts = [0] * (bucket_count + 1)
    for index in indices:
        counts[index] += 1
    return counts


# --- Histogram ----------------------------------------------------------------------------------

BOUNDS = (1.0, 2.0, 5.0)


@pytest.mark.parametrize(
    ("value", "bucket"),
    [(-1.0, 0), (0.5, 0), (1.0, 0), (1.5, 1), (2.0, 1), (5.0, 2), (5.000001, 3), (1e9, 3)],
)
def test_a_value_equal_to_a_bound_lands_in_that_bounds_bucket(value: float, bucket: int) -> None:
    """Prometheus buckets are `le`: a bucket counts the values less than or equal to its bound."""
    histogram = Histogram(BOUNDS)
    histogram.observe(value)
    assert histogram.counts == one_in(len(BOUNDS), bucket)
    assert histogram.sum == value


def test_observe_many_counts_and_sums_as_observe_does() -> None:
    values = np.array([0.5, 1.0, 1.5, 2.0, 2.0, 5.0, 7.0])
    many = Histogram(BOUNDS)
    many.observe_many(values)
    many.observe_many(values[:2])
    assert many.counts == [4, 3, 1, 1]
    assert many.sum == 20.5


def test_observe_many_of_float32_confidences_agrees_with_observe() -> None:
    """The model's probabilities are float32: 0.4 as float32 is a little above 0.4, 0.7 a little
    below 0.7. A batch and a single row put the same value in the same bucket."""
    values = np.array([0.4, 0.5, 0.7, 0.95, 0.999, 1.0], dtype=np.float32)
    one_by_one = Histogram(CONFIDENCE_BUCKETS)
    for value in values:
        one_by_one.observe(float(value))
    many = Histogram(CONFIDENCE_BUCKETS)
    many.observe_many(values)
    assert many.counts == one_by_one.counts
    assert many.sum == pytest.approx(one_by_one.sum)


# --- Metrics.snapshot ---------------------------------------------------------------------------


def test_a_snapshot_holds_what_the_worker_counted() -> None:
    recorder = Metrics(models=[MODEL])
    recorder.request("droid", "/sklearn", "POST", "sklearn", "200", 0.003)
    recorder.request("droid", "/sklearn", "POST", "sklearn", "200", 0.0005)
    recorder.request("droid", "/sklearn", "POST", "sklearn", "422", 0.001)
    recorder.shed()
    recorder.unauthenticated("grpc", "wrong")
    recorder.unauthenticated("grpc", "wrong")
    recorder.prediction("sklearn", 0.0001, LABELS, np.array([2]), np.array([0.95]))
    recorder.prediction("sklearn", 0.002, LABELS, np.array([0, 2, 2]), np.array([0.5, 0.7, 1.0]))
    recorder.in_flight = 2
    before, snapshot, after = time.time(), recorder.snapshot(), time.time()
    values = counter_values(snapshot)
    (last_prediction,) = values.pop(LAST_PREDICTION.name).items()
    assert last_prediction[0] == ("sklearn",)
    assert before - 1 <= last_prediction[1] <= after
    assert values == {
        "crystal_requests": {
            ("droid", "/sklearn", "POST", "sklearn", "200"): 2,
            ("droid", "/sklearn", "POST", "sklearn", "422"): 1,
        },
        "crystal_request_seconds": {
            ("droid", "/sklearn", "POST", "sklearn", "200"): pytest.approx(0.0035),
            ("droid", "/sklearn", "POST", "sklearn", "422"): 0.001,
        },
        "crystal_requests_shed": {(): 1},
        "crystal_unauthenticated_requests": {("grpc", "wrong"): 2},
        "crystal_predictions": {("sklearn", "yellow"): 3, ("sklearn", "blue"): 1},
        "crystal_worker_exits": {},  # counted by the master, never by a worker
    }
    histograms = histogram_values(snapshot)
    assert histograms["crystal_request_duration_seconds"] == {
        ("/sklearn",): (one_in(12, 3, 0, 1), pytest.approx(0.0045))
    }
    assert histograms["crystal_inference_duration_seconds"] == {
        ("sklearn",): (one_in(12, 3, 7), pytest.approx(0.0021))
    }
    assert histograms["crystal_request_rows"] == {("sklearn",): (one_in(12, 0, 2), 4.0)}
    assert histograms["crystal_prediction_confidence"] == {
        ("sklearn",): (one_in(10, 6, 1, 3, 9), pytest.approx(3.15))
    }
    assert snapshot.in_flight == 2
    assert snapshot.pid == os.getpid()
    assert snapshot.worker_id.startswith(f"{os.getpid()}-")
    assert snapshot.models == [MODEL]
    assert snapshot.resident_bytes > 0
    assert snapshot.cpu_seconds > 0
    assert snapshot.retired_ids == []


def test_a_snapshot_is_not_changed_by_later_counts() -> None:
    """A worker keeps counting while its snapshot is encoded."""
    recorder = Metrics()
    recorder.shed()
    recorder.prediction("sklearn", 0.001, LABELS, np.array([1]), np.array([0.9]))
    snapshot = recorder.snapshot()
    recorder.shed()
    recorder.prediction("sklearn", 0.001, LABELS, np.array([1]), np.array([0.9]))
    assert counter_values(snapshot)[SHED.name] == {(): 1}
    assert histogram_values(snapshot)["crystal_request_rows"] == {("sklearn",): (one_in(12, 0), 1)}


# --- _merge -------------------------------------------------------------------------------------


def test_merge_adds_counters_over_the_union_of_label_sets() -> None:
    first = Snapshot(
        counters={
            "crystal_requests": [(["/a", "GET", "", "200"], 2.0), (["/a", "GET", "", "404"], 1.0)],
            "crystal_requests_shed": [([], 1.0)],
        }
    )
    second = Snapshot(
        counters={
            "crystal_requests": [
                (["/a", "GET", "", "200"], 3.0),
                (["/b", "POST", "m", "200"], 4.0),
            ],
            "crystal_predictions": [(["m", "blue"], 5.0)],
        }
    )
    assert counter_values(_merge([first, second], live=False)) == {
        "crystal_requests": {
            ("/a", "GET", "", "200"): 5.0,
            ("/a", "GET", "", "404"): 1.0,
            ("/b", "POST", "m", "200"): 4.0,
        },
        "crystal_requests_shed": {(): 1.0},
        "crystal_predictions": {("m", "blue"): 5.0},
    }


def test_merge_keeps_the_latest_timestamp_of_a_recorded_gauge() -> None:
    """A model's last prediction is the latest any worker, live or retired, saw."""
    name = LAST_PREDICTION.name
    first = Snapshot(counters={name: [(["m"], 300.0), (["n"], 5.0)]})
    second = Snapshot(counters={name: [(["m"], 200.0), (["n"], 7.0), (["o"], 1.0)]})
    merged = {("m",): 300.0, ("n",): 7.0, ("o",): 1.0}
    assert counter_values(_merge([first, second], live=False)) == {name: merged}
    assert counter_values(_merge([second, first], live=False)) == {name: merged}


def test_totals_read_values_and_histograms_by_labels() -> None:
    recorder = Metrics()
    recorder.request("v2", "/v2/models/{name}/infer", "POST", "sklearn", "200", 0.25)
    recorder.prediction("sklearn", 0.5, LABELS, np.array([0, 1, 1]), np.full(3, 0.9))
    totals = recorder.totals()
    labels = ("v2", "/v2/models/{name}/infer", "POST", "sklearn", "200")
    assert totals.values(metrics.REQUESTS) == {labels: 1}
    assert totals.values(metrics.REQUEST_TIME) == {labels: 0.25}
    assert totals.histogram(metrics.ROWS, ("sklearn",)) == (1, 3.0)
    assert totals.histogram(metrics.INFERENCE_SECONDS, ("sklearn",)) == (1, 0.5)
    assert totals.histogram(metrics.ROWS, ("pytorch",)) == (0, 0.0)


def test_merge_adds_histograms_bucket_by_bucket_and_their_sums() -> None:
    first = Snapshot(histograms={"crystal_request_rows": [(["m"], [1, 0, 2], 7.0)]})
    second = Snapshot(
        histograms={"crystal_request_rows": [(["m"], [0, 3, 1], 9.0), (["n"], [1, 1, 1], 3.5)]}
    )
    assert histogram_values(_merge([first, second], live=False)) == {
        "crystal_request_rows": {("m",): ([1, 3, 3], 16.0), ("n",): ([1, 1, 1], 3.5)}
    }


def test_merge_keeps_gauges_only_for_live_workers() -> None:
    """The retired totals must not hold a dead worker's requests in flight or its memory."""
    first = Snapshot(in_flight=2, resident_bytes=10, cpu_seconds=1.0, pid=1, models=[MODEL])
    second = Snapshot(in_flight=3, pid=2, retired_ids=["7-1", "8-1"])
    assert _merge([first, second], live=True).in_flight == 5
    retired = _merge([first, second], live=False)
    assert (retired.in_flight, retired.resident_bytes, retired.cpu_seconds) == (0, 0, 0.0)
    assert (retired.pid, retired.models) == (0, [])
    assert retired.retired_ids == ["7-1", "8-1"]


# --- MetricsFolder: write, read_all, retire -----------------------------------------------------


def test_read_all_returns_the_latest_snapshot_of_every_worker(tmp_path: Path) -> None:
    folder = MetricsFolder(tmp_path)
    for pid in (103, 101, 102):
        folder.write(recorded(pid, shed=1))
    latest = recorded(102, shed=5, batches=[3])
    folder.write(latest)  # a later flush replaces the earlier one
    retired, workers = folder.read_all()
    assert retired == Snapshot()
    assert [worker.worker_id for worker in workers] == ["101-1", "102-1", "103-1"]
    assert workers[1] == latest
    assert [counter_values(worker)[SHED.name] for worker in workers] == [{(): 1}, {(): 5}, {(): 1}]


def test_read_all_skips_a_worker_file_it_cannot_decode(tmp_path: Path) -> None:
    folder = MetricsFolder(tmp_path)
    folder.write(recorded(101, shed=1))
    (tmp_path / "worker-102-1.json").write_bytes(b'{"counters": ')
    assert [worker.worker_id for worker in folder.read_all()[1]] == ["101-1"]


def test_retire_moves_a_workers_totals_into_the_retired_file(tmp_path: Path) -> None:
    folder = MetricsFolder(tmp_path)
    gone = recorded(101, requests=2, shed=1, batches=[3], in_flight=1)
    folder.write(gone)
    folder.write(recorded(102, shed=4))
    folder.retire(101, "crash")
    assert not folder.worker_file(gone).exists()
    retired, workers = folder.read_all()
    assert [worker.worker_id for worker in workers] == ["102-1"]
    assert retired.retired_ids == ["101-1"]
    assert counter_values(retired) == {
        **counter_values(gone),
        WORKER_EXITS.name: {("crash",): 1.0},
    }
    assert histogram_values(retired) == histogram_values(gone)
    assert (retired.in_flight, retired.resident_bytes, retired.pid, retired.models) == (0, 0, 0, [])


def test_retire_touches_only_the_files_of_that_pid(tmp_path: Path) -> None:
    folder = MetricsFolder(tmp_path)
    for pid in (10, 101, 1010):
        folder.write(recorded(pid, shed=1))
    folder.retire(10, "stop")
    left = sorted(path.name for path in tmp_path.glob("worker-*"))
    assert left == ["worker-101-1.json", "worker-1010-1.json"]
    assert folder.read_all()[0].retired_ids == ["10-1"]


def test_retiring_a_worker_that_never_published_counts_only_its_exit(tmp_path: Path) -> None:
    """A worker can die before its first flush."""
    folder = MetricsFolder(tmp_path)
    folder.write(recorded(102, shed=4))
    folder.retire(101, "timeout")
    retired, workers = folder.read_all()
    assert counter_values(retired) == {WORKER_EXITS.name: {("timeout",): 1.0}}
    assert retired.retired_ids == []
    assert [worker.worker_id for worker in workers] == ["102-1"]


def test_the_retired_file_keeps_the_last_retired_ids_kept_ids_and_every_count(
    tmp_path: Path,
) -> None:
    """The retired file stays small; an id forgotten is of a worker whose file is long gone."""
    folder = MetricsFolder(tmp_path)
    retirements = RETIRED_IDS_KEPT + 3
    pids = range(1000, 1000 + retirements)
    for pid in pids:
        folder.write(recorded(pid, shed=1))
        folder.retire(pid, "reload")
    retired, workers = folder.read_all()
    assert workers == []
    assert retired.retired_ids == [f"{pid}-1" for pid in pids[3:]]
    assert counter_values(retired)[SHED.name] == {(): retirements}
    assert counter_values(retired)[WORKER_EXITS.name] == {("reload",): retirements}


def test_an_unknown_exit_reason_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    folder = MetricsFolder(tmp_path)
    folder.write(recorded(300, shed=1))
    with pytest.raises(ValueError, match="unknown worker exit reason 'restart'"):
        folder.retire(300, "restart")
    assert not (tmp_path / RETIRED_FILE).exists()
    assert [worker.worker_id for worker in folder.read_all()[1]] == ["300-1"]


@pytest.mark.parametrize("reason", EXIT_REASONS)
def test_a_retired_worker_is_counted_under_its_exit_reason(tmp_path: Path, reason: str) -> None:
    folder = MetricsFolder(tmp_path)
    folder.write(recorded(101, shed=3))
    folder.write(recorded(102, shed=4))
    folder.retire(101, reason)
    parsed = samples(scrape(folder))
    assert exits(parsed) == {**dict.fromkeys(EXIT_REASONS, 0.0), reason: 1.0}
    assert parsed[SHED_TOTAL] == 7  # the retired worker's counts stay
    assert live_workers(parsed) == ["102"]


def test_worker_exits_add_up_per_reason(tmp_path: Path) -> None:
    """A reload of two workers, a scale-down, a timeout and two crashes."""
    folder = MetricsFolder(tmp_path)
    reasons = ["reload", "reload", "stop", "timeout", "crash", "crash"]
    for pid, reason in enumerate(reasons, start=200):
        folder.write(recorded(pid, shed=1))
        folder.retire(pid, reason)
    parsed = samples(scrape(folder))
    assert exits(parsed) == {"reload": 2.0, "stop": 1.0, "timeout": 1.0, "crash": 2.0}
    assert parsed[SHED_TOTAL] == 6


# --- A scrape and a retirement at once ----------------------------------------------------------


@pytest.mark.parametrize(
    ("racing_file", "retire_after_reading", "live"),
    [
        ("worker-101-1.json", False, ["102"]),
        ("worker-101-1.json", True, ["102"]),
        (RETIRED_FILE, True, ["101", "102"]),
    ],
    ids=["before-its-file", "between-its-file-and-the-retired-file", "after-the-retired-file"],
)
def test_a_scrape_racing_a_retirement_counts_the_worker_once(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    racing_file: str,
    retire_after_reading: bool,
    live: list[str],
) -> None:
    """The master retires worker 101 at a chosen point among a scrape's reads: its totals are in
    that scrape's answer exactly once, and no total moves across the retirement."""
    folder = MetricsFolder(tmp_path)
    folder.write(recorded(101, requests=2, shed=3, batches=[4, 1]))
    folder.write(recorded(102, requests=1, shed=4, batches=[2]))
    work = WORK_DONE - {WORKER_EXITS.name}  # the exit itself is counted by the retirement
    before = samples(scrape(folder), work)
    read = metrics._read
    raced = False

    def read_racing_the_master(path: Path) -> Snapshot | None:
        nonlocal raced
        now = not raced and path.name == racing_file
        if now and not retire_after_reading:
            raced = True
            folder.retire(101, "reload")
        snapshot = read(path)
        if now and retire_after_reading:
            raced = True
            folder.retire(101, "reload")
        return snapshot

    monkeypatch.setattr(metrics, "_read", read_racing_the_master)
    during = scrape(folder)
    monkeypatch.undo()
    assert raced
    assert samples(during, work) == pytest.approx(before)
    assert samples(during)[SHED_TOTAL] == 7
    assert live_workers(samples(during)) == live
    after = scrape(folder)
    assert samples(after, work) == pytest.approx(before)
    assert exits(samples(after))["reload"] == 1
    assert live_workers(samples(after)) == ["102"]


def test_no_total_goes_down_across_a_retirement(tmp_path: Path) -> None:
    """A counter that goes down reads as a reset: rate() would count its whole total again."""
    folder = MetricsFolder(tmp_path)
    folder.write(recorded(101, requests=1, shed=1, batches=[2]))
    folder.write(recorded(102, requests=2, batches=[1]))
    scrapes = [scrape(folder)]
    folder.write(recorded(101, requests=3, shed=2, batches=[2, 7]))  # its last flush
    scrapes.append(scrape(folder))
    folder.retire(101, "stop")
    scrapes.append(scrape(folder))
    folder.write(recorded(103, requests=1, batches=[500]))  # its replacement
    scrapes.append(scrape(folder))
    for earlier, later in itertools.pairwise(samples(text, WORK_DONE) for text in scrapes):
        for sample, value in earlier.items():
            assert later.get(sample, -math.inf) >= value, sample


def test_a_worker_killed_with_sigkill_keeps_the_counts_of_its_last_flush(tmp_path: Path) -> None:
    """SIGKILL leaves the worker's file and no last flush; the master then retires it."""
    folder = MetricsFolder(tmp_path)
    worker = Metrics(folder, models=[MODEL])
    for _ in range(3):
        worker.shed()
    worker.flush()
    worker.shed()  # after its last flush: lost with the process
    killed = samples(scrape(folder))
    assert killed[SHED_TOTAL] == 3
    assert live_workers(killed) == [str(os.getpid())]  # until the master notices
    folder.retire(os.getpid(), "crash")
    retired = samples(scrape(folder))
    assert retired[SHED_TOTAL] == 3
    assert exits(retired) == {**dict.fromkeys(EXIT_REASONS, 0.0), "crash": 1.0}
    assert live_workers(retired) == []
    assert not [name for name, _ in retired if name == "crystal_model_info"]
    assert not list(tmp_path.glob("worker-*"))


# --- Metrics.exposition -------------------------------------------------------------------------


def test_a_workers_scrape_publishes_its_own_counts_before_adding_up(tmp_path: Path) -> None:
    folder = MetricsFolder(tmp_path)
    folder.write(recorded(101, shed=4))
    worker = Metrics(folder)
    worker.shed()
    body, content_type = worker.exposition()
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert samples(body.decode())[SHED_TOTAL] == 5
    assert folder.worker_file(worker.snapshot()).exists()


def test_without_a_folder_a_worker_exports_its_own_counts() -> None:
    worker = Metrics()
    worker.shed()
    parsed = samples(worker.exposition()[0].decode())
    assert parsed[SHED_TOTAL] == 1
    assert live_workers(parsed) == [str(os.getpid())]


# --- exposition, as a scraper parses it ---------------------------------------------------------


def test_an_empty_folder_exports_every_exit_reason_and_shed_at_zero(tmp_path: Path) -> None:
    """So the first crash or shed request is an increase a rate sees, not a series appearing."""
    assert samples(scrape(MetricsFolder(tmp_path))) == {
        **{key("crystal_worker_exits_total", reason=reason): 0.0 for reason in EXIT_REASONS},
        SHED_TOTAL: 0.0,
        key("crystal_requests_in_flight"): 0.0,
    }


def test_the_table_declares_the_exported_contract() -> None:
    assert {d.name: (d.kind, d.labels) for d in FAMILIES} == CONTRACT


def test_every_exported_family_and_label_is_the_tables(tmp_path: Path) -> None:
    text = scrape(busy_folder(tmp_path))
    exported = {}
    for family in text_string_to_metric_families(text):
        labels = {name for sample in family.samples for name in sample.labels} - {"le"}
        exported[family.name] = (family.type, labels)
    assert list(exported) == [d.name for d in FAMILIES]
    assert exported == {d.name: (d.kind, set(d.labels)) for d in FAMILIES}


def test_histogram_buckets_are_cumulative_up_to_inf_and_count(tmp_path: Path) -> None:
    folder = MetricsFolder(tmp_path)
    folder.write(recorded(101, requests=2, batches=[1, 3, 700]))
    folder.write(recorded(102, batches=[3, 200_000]))
    folder.retire(101, "reload")
    parsed = samples(scrape(folder))
    bounds = [*(f"{bound:g}" for bound in ROW_BUCKETS), "+Inf"]
    rows = [parsed[key("crystal_request_rows_bucket", model="sklearn", le=le)] for le in bounds]
    assert rows == [1, 1, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 5]
    assert parsed[key("crystal_request_rows_count", model="sklearn")] == 5
    assert parsed[key("crystal_request_rows_sum", model="sklearn")] == 1 + 3 + 700 + 3 + 200_000
    # The dashboard's share of low-confidence rows reads this exact bound.
    assert key("crystal_prediction_confidence_bucket", model="sklearn", le="0.6") in parsed


def test_every_histogram_has_its_bounds_then_inf_cumulative(tmp_path: Path) -> None:
    for family in text_string_to_metric_families(scrape(busy_folder(tmp_path))):
        if family.type != "histogram":
            continue
        definition = next(d for d in HISTOGRAMS if d.name == family.name)
        buckets = [s for s in family.samples if s.name.endswith("_bucket")]
        (count,) = [s.value for s in family.samples if s.name.endswith("_count")]
        assert [s.labels["le"] for s in buckets] == [
            *(f"{b:g}" for b in definition.buckets),
            "+Inf",
        ]
        assert [s.value for s in buckets] == sorted(s.value for s in buckets)
        assert buckets[-1].value == count > 0


def test_the_openmetrics_exposition_ends_with_eof_and_says_the_same(tmp_path: Path) -> None:
    folder = busy_folder(tmp_path)
    text, text_type = exposition(*folder.read_all())
    openmetrics, openmetrics_type = exposition(*folder.read_all(), PROMETHEUS_ACCEPT)
    assert text_type == "text/plain; version=0.0.4; charset=utf-8"
    assert openmetrics_type.startswith("application/openmetrics-text; version=1.0.0")
    assert openmetrics.decode().endswith("# EOF\n")
    assert b"# EOF" not in text
    parsed = {
        key(sample.name, **sample.labels): sample.value
        for family in openmetrics_families(openmetrics.decode())
        for sample in family.samples
    }
    assert parsed == samples(text.decode())
