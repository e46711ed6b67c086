"""Long-running modes as real processes: watch, processing-time, the lock, crashes."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import commits, make_config, read_tables
from pyspark.sql import SparkSession
from reference import (
    TABLE_KEYS,
    assert_tables_match,
    expected_staging,
    expected_tables,
    load_deliveries,
    reconciliation_errors,
)
from service import ROOT, Service, batches_from_checkpoint, place_file, write_config

from streaming import ingestion_log, runner, sinks
from streaming.batch import CRASH_ENV, CRASH_POINTS
from streaming.config import Config
from streaming.generator import SampleSpec, meterpoint_ids, write_delivery, write_dimensions, write_sample
from streaming.small_writes import MAX_ROWS

SPEC = SampleSpec(meterpoints=8, days=2, seed=11)


def assert_matches_reference(spark: SparkSession, tmp: Path, archive: Path | None = None) -> None:
    """Every table equals the reference replaying the batches the checkpoint recorded
    (a file moved to `archive` is read there)."""

    def where(path: Path) -> Path:
        return path if path.exists() or archive is None else ingestion_log.archive_path(archive, path)

    batches = [load_deliveries(map(where, files)) for files in batches_from_checkpoint(tmp / "checkpoints")]
    actual = read_tables(spark, str(tmp / "lake"), list(TABLE_KEYS))
    expected = expected_tables(expected_staging(batches, "Europe/London"), tmp / "data" / "case_study.db")
    assert_tables_match(actual, expected, TABLE_KEYS)
    assert reconciliation_errors(actual) == []


def batch_files_seen(service: Service) -> int:
    import json
    import re

    total = 0
    for line in service.lines:
        m = re.search(r"streaming.batch: batch (\{.*\})", line)
        if m:
            total += json.loads(m.group(1))["files"]
    return total


@pytest.mark.service
@pytest.mark.parametrize("archived", [False, True], ids=["files-kept", "files-archived"])
def test_watch_mode_picks_up_placed_files_refuses_a_second_writer_and_stops_on_sigterm(
    spark: SparkSession, tmp_path: Path, archived: bool
) -> None:
    """`archived`: processed files are moved out (archive_dir) and the ingestion log
    rotates after every 5 files, so runs start on new generations as files arrive."""
    write_sample(tmp_path / "src", SPEC)
    readings = tmp_path / "data" / "readings"
    readings.mkdir(parents=True)
    shutil.copy2(tmp_path / "src" / "case_study.db", tmp_path / "data" / "case_study.db")
    archive = tmp_path / "archive" if archived else None
    rotation = {"archive_dir": str(archive), "ingestion_log_max_files": 5} if archive else {}
    config = write_config(tmp_path, {"watch_debounce_seconds": 0.3, "dims_check_seconds": 2, **rotation})
    service = Service(config, "--trigger", "watch")
    try:
        service.wait_for(r"watching .* for new files")

        # a second writer on the same checkpoint is refused at once, with one line
        second = subprocess.run(
            [sys.executable, str(ROOT / "run_stream.py"), "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode != 0
        err_lines = second.stderr.strip().splitlines()
        assert len(err_lines) == 1, second.stderr
        assert "in use by pid" in err_lines[0]

        # files placed atomically (hidden name, then rename) are processed
        sources = sorted((tmp_path / "src" / "readings").glob("*.json"))
        for source in sources:
            place_file(source, readings)
        (readings / ".half-written.json.tmp").write_text('{"columns": [')  # hidden: ignored
        while batch_files_seen(service) < len(sources):
            service.wait_for(r"watch: run finished", after=len(service.lines))
        assert service.terminate(timeout=120) == 0, service.tail()
    finally:
        service.kill_tree()
    assert batch_files_seen(service) == len(sources)
    if archived:
        assert service.count(r"ingestion log: rotated after") >= 1, service.tail()
    assert_matches_reference(spark, tmp_path, archive)


@pytest.mark.service
def test_processing_time_service_reattributes_readings_after_a_dimension_refresh(
    spark: SparkSession, tmp_path: Path
) -> None:
    write_sample(tmp_path / "data", SPEC)
    db = tmp_path / "data" / "case_study.db"
    config = write_config(tmp_path, {"processing_interval": "1 second", "dims_check_seconds": 1})
    service = Service(config, "--trigger", "processing-time")
    try:
        first = service.wait_for(r"streaming.batch: batch \{")
        # midnight: the database is replaced; a meterpoint without agreement gets one
        write_dimensions(
            db,
            meterpoint_ids(SPEC.meterpoints, SPEC.seed),
            SPEC.start,
            SPEC.days,
            SPEC.seed,
            onboard_on=SPEC.start,
        )
        service.wait_for(r"re-attributing", after=first)
        landed = service.wait_for(r"dimensions landed", after=first)
        # the stream goes on with the new dimensions
        write_delivery(tmp_path / "data" / "readings", None, SPEC, day_index=SPEC.days, tag="d2")
        service.wait_for(r"streaming.batch: batch \{", after=landed)
        # Ctrl-C, then a SIGTERM on top: the batch in flight still finishes and
        # commits (pyspark's own SIGINT handler would cancel its jobs), exit 0
        assert service.terminate(timeout=120, signals=(signal.SIGINT, signal.SIGTERM)) == 0, service.tail()
    finally:
        service.kill_tree()
    assert_matches_reference(spark, tmp_path)


@pytest.mark.service
def test_processing_time_service_restarts_its_query_on_a_new_ingestion_log_generation(
    spark: SparkSession, tmp_path: Path
) -> None:
    """With processed files archived and the log limit reached by the first batch, the
    service stops its query between triggers, rotates the log and goes on: the next
    delivery is read once, as lake batch 1 of the new generation."""
    summary = write_sample(tmp_path / "data", SPEC)
    archive = tmp_path / "archive"
    config = write_config(
        tmp_path,
        {
            "processing_interval": "1 second",
            "dims_check_seconds": 1,
            "archive_dir": str(archive),
            "ingestion_log_max_files": summary["files"],
        },
    )
    service = Service(config, "--trigger", "processing-time")
    try:
        service.wait_for(r"streaming.batch: batch \{")
        restarted = service.wait_for(r"due for a new generation; restarting the query")
        service.wait_for(r"ingestion log: rotated after", after=restarted)
        delivered = write_delivery(tmp_path / "data" / "readings", None, SPEC, day_index=SPEC.days, tag="d2")
        # the files are written one by one: a trigger may take them in more than one batch
        after: list[dict] = []
        while sum(b["files"] for b in after) < len(delivered):
            at = service.wait_for(r"streaming.batch: batch \{", after=restarted)
            after.append(json.loads(service.lines[at].split("batch ", 1)[1]))
            restarted = at + 1
        assert service.terminate(timeout=120) == 0, service.tail()
    finally:
        service.kill_tree()
    assert [b["batch_id"] for b in after] == list(range(1, len(after) + 1)), service.tail()
    assert sum(b["files"] for b in after) == len(delivered)
    # one restart, once batch 0 had committed: no batch was refused on the way
    assert service.count(r"restarting the query") == 1
    assert service.count(r"stopped before the next batch began") == 0
    assert ingestion_log.current(str(tmp_path / "checkpoints")) == ingestion_log.Generation(
        f"{tmp_path}/checkpoints/{ingestion_log.PREFIX}1", 1
    )
    assert_matches_reference(spark, tmp_path, archive)
    assert raw_rows(spark, tmp_path) == delivered_rows(tmp_path, archive)


@pytest.mark.service
def test_kill_9_of_the_process_tree_mid_presentation_then_restart_gives_the_uninterrupted_result(
    spark: SparkSession, tmp_path: Path
) -> None:
    point = "mid_presentation"
    write_sample(tmp_path / "data", SPEC)
    config = write_config(tmp_path)
    crashed = Service(config, env={CRASH_ENV: point})
    code = crashed.proc.wait(timeout=600)
    crashed.kill_tree()
    assert code == -9, crashed.tail()
    assert crashed.count(f"crash hook: killing the process at {point}") == 1

    # a plain restart (here on the test's warm session) is not locked out and recovers
    cfg = make_config(
        tmp_path, readings=tmp_path / "data" / "readings", db=tmp_path / "data" / "case_study.db"
    )
    pipeline = runner.run(cfg, spark=spark)
    assert [b["batch_id"] for b in pipeline.batches] == [0]  # the crashed batch, replayed
    assert_matches_reference(spark, tmp_path)
    assert raw_rows(spark, tmp_path) == delivered_rows(tmp_path)  # the raw append was not repeated


@pytest.mark.parametrize(
    ("crashed", "replayed"),
    [("auto", "auto"), ("spark", "auto"), ("auto", "spark"), ("large", "spark"), ("spark", "large")],
)
@pytest.mark.parametrize("point", [p for p in CRASH_POINTS if p != "mid_presentation"])
def test_batch_failing_at_each_crash_point_is_replayed_exactly_on_restart(
    spark: SparkSession,
    tmp_path: Path,
    point: str,
    crashed: str,
    replayed: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same recovery in-process (a batch that dies at the point), on the warm session;
    the kill -9 test above covers the third point with a real process. The crashed run
    and the replay may commit through different writers (`small_writes`: delta-rs for
    these small writes, or Spark; `large`: `auto` with every raw and staging write
    too large for the driver, so the executors write them with pyarrow): each finds
    what the other committed."""
    write_sample(tmp_path / "data", SPEC)

    def config(small_writes: str) -> Config:
        data = tmp_path / "data"
        monkeypatch.setattr(sinks.small_writes, "MAX_ROWS", 0 if small_writes == "large" else MAX_ROWS)
        return make_config(
            tmp_path,
            readings=data / "readings",
            db=data / "case_study.db",
            small_writes="auto" if small_writes == "large" else small_writes,
        )

    with pytest.raises(runner.PipelineError, match=f"simulated crash at {point}"):
        runner.run(config(crashed), spark=spark, raise_at=point)
    pipeline = runner.run(config(replayed), spark=spark)
    if "large" in (crashed, replayed):  # who wrote raw and staging: the executors, or Spark

        def writers(table: str) -> set[str]:
            return {engine for op, engine in commits(spark, str(tmp_path / "lake" / table)) if op == "WRITE"}

        engine = {"large": "delta-rs", "spark": "Apache-Spark"}
        assert writers("raw/readings") == {engine[crashed]}
        assert writers("staging/readings") == {engine[crashed if point == "after_staging" else replayed]}
    assert [b["batch_id"] for b in pipeline.batches] == [0]
    assert_matches_reference(spark, tmp_path)
    assert raw_rows(spark, tmp_path) == delivered_rows(tmp_path)


def raw_rows(spark: SparkSession, tmp: Path) -> int:
    return spark.read.format("delta").load(str(tmp / "lake" / "raw" / "readings")).count()


def delivered_rows(tmp: Path, archive: Path | None = None) -> int:
    """Rows of every delivered file, in the readings folder (and moved to `archive`)."""
    files = [*(tmp / "data" / "readings").glob("*.json"), *(archive.rglob("*.json") if archive else [])]
    return sum(len(json.loads(p.read_text())["data"]) for p in files)
