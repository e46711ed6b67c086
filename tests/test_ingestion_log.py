"""The ingestion log's generations: a new checkpoint once the file source's log is
long and processed files leave the readings folder (`streaming.ingestion_log`)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from conftest import make_config, read_tables
from pyspark.sql import SparkSession
from reference import (
    TABLE_KEYS,
    assert_tables_match,
    expected_staging,
    expected_tables,
    load_deliveries,
    reconciliation_errors,
)

from streaming import ingestion_log, runner
from streaming.config import Config, ConfigError
from streaming.generator import SampleSpec, write_delivery, write_sample
from streaming.ingestion_log import PREFIX, Generation

SPEC = SampleSpec(meterpoints=4, days=2, seed=11)


def write_log(checkpoint: Path, name: str, entries: list[tuple[str, int, int]]) -> None:
    """A file-source log file as Spark writes it (`v1`, then one JSON entry a line)."""
    folder = checkpoint / "sources" / "0"
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["v1", *(json.dumps({"path": p, "timestamp": t, "batchId": b}) for p, t, b in entries)]
    (folder / name).write_text("\n".join(lines))
    (folder / f".{name}.crc").write_bytes(b"crc")  # Spark's checksum files are not log files


def mark(checkpoint: Path, folder: str, batch: int, log_offset: int | None = None) -> None:
    """An `offsets` file as Spark writes it (the source's log offset on its third
    line, the batch id unless given), or a `commits` file."""
    (checkpoint / folder).mkdir(parents=True, exist_ok=True)
    if folder == "offsets":
        offset = batch if log_offset is None else log_offset
        text = 'v1\n{"batchWatermarkMs":0,"batchTimestampMs":0,"conf":{}}\n' + json.dumps(
            {"logOffset": offset}
        )
    else:
        text = 'v1\n{"nextBatchWatermarkMs":0}'
    (checkpoint / folder / str(batch)).write_text(text)


def delivered(folder: Path, name: str, mtime_ms: int) -> tuple[Path, str]:
    """A file in `folder` with the given modification time, and its URI as the source logs it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text('{"columns": [], "data": []}')
    os.utime(path, ns=(mtime_ms * 1_000_000, mtime_ms * 1_000_000))
    return path, "file://" + str(path).replace(" ", "%20")


def archiving_config(tmp_path: Path, readings: Path) -> tuple[Config, Path]:
    """A config archiving processed files to `tmp_path/archive`, rotating after every file."""
    archive = tmp_path / "archive"
    return make_config(
        tmp_path, readings=readings, archive_dir=str(archive), ingestion_log_max_files=1
    ), archive


def test_the_latest_generation_is_in_use(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    assert ingestion_log.current(str(checkpoints)) == Generation(f"{checkpoints}/readings", 0)
    (checkpoints / "readings").mkdir(parents=True)
    (checkpoints / f"{PREFIX}7").mkdir()
    (checkpoints / f"{PREFIX}12").mkdir()
    (checkpoints / f"{PREFIX}99").write_text("a file, not a generation")
    (checkpoints / f"{PREFIX}x").mkdir()
    assert ingestion_log.current(str(checkpoints)) == Generation(f"{checkpoints}/{PREFIX}12", 12)
    assert Generation("x", 12).lake_batch(3) == 15
    # checkpoints on object storage: the first generation, never listed
    assert ingestion_log.current("s3a://bucket/checkpoints/") == Generation(
        "s3a://bucket/checkpoints/readings", 0
    )


def test_the_log_is_read_as_spark_restores_it(tmp_path: Path) -> None:
    checkpoint = tmp_path / "readings"
    write_log(checkpoint, "8", [("file:///r/h.json", 8, 8)])  # compacted into 9 already
    write_log(checkpoint, "9.compact", [("file:///r/a.json", 1, 0), ("file:///r/h.json", 8, 8)])
    write_log(checkpoint, "10", [("file:///r/b%20c.json", 10, 10)])
    write_log(checkpoint, "11", [])
    logged = ingestion_log.logged_files(checkpoint)
    assert [(f.path, f.timestamp_ms, f.batch_id) for f in logged] == [
        ("file:///r/a.json", 1, 0),
        ("file:///r/h.json", 8, 8),
        ("file:///r/b%20c.json", 10, 10),
    ]
    for batch in (8, 9, 10, 11):
        mark(checkpoint, "offsets", batch)
    assert ingestion_log.batch_files(str(checkpoint), 10) == ["file:///r/b%20c.json"]
    assert ingestion_log.batch_files(str(checkpoint), 9) == []  # the compaction holds no entry of batch 9
    assert ingestion_log.batch_files(str(checkpoint), 12) is None  # no offsets: not planned
    assert ingestion_log.batch_files("s3a://b/readings", 10) is None
    assert ingestion_log.local_folder("file:///r/b%20c.json") == Path("/r/b c.json")
    (checkpoint / "sources" / "0" / "12").write_text("v2\n{}")
    with pytest.raises(RuntimeError, match="version v1"):
        ingestion_log.logged_files(checkpoint)


def test_batch_files_follow_the_offsets_when_a_run_died_between_the_two_logs(tmp_path: Path) -> None:
    """The source logged log id 1 and the run died before `offsets/1`: the next
    batch, Spark's 1, reads log ids 1 and 2, and every later batch is one id ahead."""
    checkpoint = tmp_path / "readings"
    write_log(checkpoint, "0", [("file:///r/a.json", 1, 0)])
    write_log(checkpoint, "1", [("file:///r/orphan.json", 2, 1)])
    write_log(checkpoint, "2", [("file:///r/b.json", 3, 2)])
    write_log(checkpoint, "3", [("file:///r/c.json", 4, 3)])
    mark(checkpoint, "offsets", 0)
    mark(checkpoint, "offsets", 1, log_offset=2)
    mark(checkpoint, "offsets", 2, log_offset=3)
    assert ingestion_log.source_offset(checkpoint, 1) == 2
    assert ingestion_log.batch_files(str(checkpoint), 0) == ["file:///r/a.json"]
    assert ingestion_log.batch_files(str(checkpoint), 1) == ["file:///r/orphan.json", "file:///r/b.json"]
    assert ingestion_log.batch_files(str(checkpoint), 2) == ["file:///r/c.json"]
    (checkpoint / "offsets" / "3").write_text("v1\n")
    with pytest.raises(RuntimeError, match="not an offsets file"):
        ingestion_log.source_offset(checkpoint, 3)


def test_rotation_only_when_due_and_possible(tmp_path: Path) -> None:
    readings = tmp_path / "readings"
    _, uri = delivered(readings, "a.json", 1_000)
    cfg = make_config(
        tmp_path, readings=readings, archive_dir=str(tmp_path / "archive"), ingestion_log_max_files=2
    )
    first = tmp_path / "checkpoints" / "readings"
    assert not ingestion_log.rotate_if_due(cfg).rotated  # nothing read yet
    write_log(first, "0", [(uri, 1_000, 0)])
    mark(first, "offsets", 0)
    mark(first, "commits", 0)
    assert not ingestion_log.rotate_if_due(cfg).rotated  # 1 file logged, 2 needed
    write_log(first, "1", [("file:///elsewhere/b.json", 2_000, 1)])
    mark(first, "offsets", 1)
    # batch 1 was planned but never committed: Spark replays it first
    assert not ingestion_log.rotation_due(cfg)
    assert ingestion_log.rotate_if_due(cfg) == ingestion_log.Rotation(Generation(str(first), 0))
    mark(first, "commits", 1)
    assert ingestion_log.status_line(cfg) == (
        f"ingestion log: {first} (lake batches from 0): 2 files logged; a new generation once 2 are logged"
    )
    # the source logged batch 2's files, then the run died before offsets/2: Spark
    # reads them in this generation's next batch, so they must not be archived
    _, planned_uri = delivered(readings, "planned.json", 3_000)
    write_log(first, "2", [(planned_uri, 3_000, 2)])
    assert not ingestion_log.rotation_due(cfg)
    assert ingestion_log.rotate_if_due(cfg) == ingestion_log.Rotation(Generation(str(first), 0))
    assert (readings / "planned.json").exists()
    (first / "sources" / "0" / "2").unlink()
    (readings / "planned.json").unlink()
    # due, but not where processed files stay in the folder, or the log is remote, or rotation is off
    for change in ({"archive_dir": ""}, {"ingestion_log_max_files": 0}):
        off = replace(cfg, **change)
        assert ingestion_log.rotation_blocker(off) is not None
        assert not ingestion_log.rotate_if_due(off).rotated and not ingestion_log.rotation_due(off)
    remote = replace(cfg, archive_dir="s3a://b/archive")
    assert ingestion_log.rotation_blocker(remote) == "archive_dir is not on the local file system"
    assert (readings / "a.json").exists() and not (tmp_path / f"checkpoints/{PREFIX}2").exists()
    with pytest.raises(ConfigError, match="ingestion_log_max_files"):
        make_config(tmp_path, readings=readings, ingestion_log_max_files=-1)

    assert ingestion_log.rotation_due(cfg)
    done = ingestion_log.rotate_if_due(cfg)
    assert done.rotated and done.retired_files == 2 and done.archived == 1
    assert not ingestion_log.rotation_due(cfg)
    assert done.generation == Generation(f"{tmp_path}/checkpoints/{PREFIX}2", 2)
    assert (tmp_path / "checkpoints" / f"{PREFIX}2").is_dir()
    assert ingestion_log.current(cfg.checkpoints) == done.generation
    # the new generation has read nothing: the next start does not rotate again
    assert ingestion_log.rotate_if_due(cfg) == ingestion_log.Rotation(done.generation)
    assert ingestion_log.status_line(cfg) == (
        f"ingestion log: {done.generation.path} (lake batches from 2): 0 files logged; "
        "a new generation once 2 are logged"
    )
    assert ingestion_log.status_line(replace(cfg, archive_dir="")) == (
        f"ingestion log: {done.generation.path} (lake batches from 2): 0 files logged; "
        "never rotated: processed files stay in the readings folder (archive_dir is not set)"
    )


def test_rotation_archives_the_last_batch_as_spark_does_and_leaves_redeliveries(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    readings = tmp_path / "read ings"
    cfg, archive = archiving_config(tmp_path, readings)
    logged_file, logged_uri = delivered(readings, "last batch.json", 5_000)
    _, redelivered_uri = delivered(readings, "redelivered.json", 9_000)  # logged at 4_000: another file
    archived_before = ingestion_log.archive_path(archive, readings / "archived.json")
    archived_before.parent.mkdir(parents=True)
    archived_before.write_text("{}")
    _, again_uri = delivered(readings, "archived.json", 3_000)  # its logged copy is archived already
    new_file, _ = delivered(readings, "new.json", 6_000)  # not logged: the next batch's
    first = tmp_path / "checkpoints" / "readings"
    write_log(
        first,
        "0",
        [
            (logged_uri, 5_000, 0),
            (redelivered_uri, 4_000, 0),
            (again_uri, 3_000, 0),
            ("file://" + str(readings / "gone.json").replace(" ", "%20"), 1_000, 0),
        ],
    )
    mark(first, "offsets", 0)
    mark(first, "commits", 0)
    with caplog.at_level(logging.INFO, logger="streaming.ingestion_log"):
        done = ingestion_log.rotate_if_due(cfg)
    assert done.rotated and done.archived == 1 and done.retired_files == 4
    # Spark's cleanSource layout: the archive folder plus the file's absolute path
    moved = archive / str(logged_file).lstrip("/")
    assert moved.is_file() and moved.stat().st_mtime_ns == 5_000 * 1_000_000
    assert not logged_file.exists()
    assert sorted(p.name for p in readings.iterdir()) == ["archived.json", "new.json", "redelivered.json"]
    assert sorted(Path(p).name for p in done.left) == ["archived.json", "redelivered.json"]
    assert new_file.exists()
    assert "re-delivered under the same name" in caplog.text
    assert "rotated after 4 files" in caplog.text


@pytest.mark.e2e
def test_rotated_logs_read_only_new_files_and_keep_counting_batches(
    spark: SparkSession, tmp_path: Path
) -> None:
    """Five available-now runs on a warm session, each after a new delivery: a
    rotation at the end of a run that reached the limit, none while rotation is
    off, one at the start of a run whose log reached the limit before it (rotation
    turned on again); every file is read once, under the lake batch that read it."""
    write_sample(tmp_path / "data", SPEC)
    readings = tmp_path / "data" / "readings"
    db = tmp_path / "data" / "case_study.db"
    archive = tmp_path / "archive"
    checkpoints = tmp_path / "checkpoints"
    deliveries = [load_deliveries([readings])]
    cfg = make_config(
        tmp_path,
        readings=readings,
        db=db,
        archive_dir=str(archive),
        ingestion_log_max_files=len(deliveries[0]) + 1,
    )

    def deliver(n: int) -> None:
        deliveries.append(
            load_deliveries(write_delivery(readings, None, SPEC, day_index=SPEC.days + n, tag=f"d{n}"))
        )

    def run(config: Config) -> list[int]:
        return [b["batch_id"] for b in runner.run(config, spark=spark).batches]

    # 1: below the limit, no rotation; Spark archives a batch's files only when the next batch begins
    assert run(cfg) == [0]
    assert ingestion_log.current(cfg.checkpoints) == Generation(f"{checkpoints}/readings", 0)
    assert sorted(p.name for p in readings.iterdir()) == sorted(d.name for d in deliveries[0])
    # 2: the log reaches the limit: rotated at the end of the run, the folder emptied into the archive
    deliver(1)
    assert run(cfg) == [1]
    assert ingestion_log.current(cfg.checkpoints) == Generation(f"{checkpoints}/{PREFIX}2", 2)
    assert list(readings.iterdir()) == []
    # 3: rotation off: the new generation reads the next delivery as lake batch 2
    deliver(2)
    assert run(replace(cfg, ingestion_log_max_files=0)) == [2]
    assert ingestion_log.current(cfg.checkpoints).first_batch == 2
    # 4: on again with a lower limit: rotated at the start (the files of run 3 are
    # archived first, so the new generation reads only delivery 3), and at the end
    deliver(3)
    assert run(replace(cfg, ingestion_log_max_files=1)) == [3]
    assert ingestion_log.current(cfg.checkpoints) == Generation(f"{checkpoints}/{PREFIX}4", 4)
    assert sorted(p.name for p in checkpoints.iterdir() if p.is_dir()) == [
        "readings",
        f"{PREFIX}2",
        f"{PREFIX}3",
        f"{PREFIX}4",
    ]
    # 5: nothing new: no batch, no rotation
    assert run(cfg) == []
    assert ingestion_log.current(cfg.checkpoints).first_batch == 4

    # every file is in the archive, as Spark's cleaner lays them out
    assert list(readings.iterdir()) == []
    archived = [
        load_deliveries([ingestion_log.archive_path(archive, d.path) for d in delivery])
        for delivery in deliveries
    ]
    actual = read_tables(spark, cfg.lake, list(TABLE_KEYS))
    expected = expected_tables(expected_staging(archived, "Europe/London"), db)
    assert_tables_match(actual, expected, TABLE_KEYS)
    assert reconciliation_errors(actual) == []
    # raw: every file's lines once, under the lake batch that read it
    raw = spark.read.format("delta").load(f"{cfg.lake}/raw/readings")
    per_file = raw.groupBy("source_file").agg({"batch_id": "collect_set"}).toDF("source_file", "batches")
    batches_of = {
        Path(ingestion_log.local_folder(r.source_file) or "").name: sorted(r.batches)
        for r in per_file.collect()
    }
    assert len(batches_of) > len(deliveries[0]), "raw/readings lacks files"
    expected_batches = {d.name: [n] for n, delivery in enumerate(deliveries) for d in delivery}
    assert {name: expected_batches.get(name) for name in batches_of} == batches_of


def test_a_cut_short_move_is_finished_and_a_failed_move_keeps_the_generation(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    readings = tmp_path / "readings"
    cfg, archive = archiving_config(tmp_path, readings)
    # names as Spark's log writes them: URL-encoded (`%` as %25, non-ASCII as UTF-8 bytes)
    copied, _ = delivered(readings, "50% ü.json", 7_000)
    copied_uri = "file://" + quote(str(copied))
    assert ingestion_log.local_folder(copied_uri) == copied
    # a copy to another disk that died before deleting the original: same size and time
    target = ingestion_log.archive_path(archive, copied)
    target.parent.mkdir(parents=True)
    shutil.copy2(copied, target)
    # a re-delivery copied with its times kept, of the same size as the archived first
    # delivery but other bytes: not a cut-short move, it is left to be read
    twin, twin_uri = delivered(readings, "twin.json", 6_000)
    twin.write_text('{"v": 2.0}')
    os.utime(twin, ns=(6_000_000_000, 6_000_000_000))
    archived_twin = ingestion_log.archive_path(archive, twin)
    archived_twin.write_text('{"v": 1.0}')
    os.utime(archived_twin, ns=(6_000_000_000, 6_000_000_000))
    blocked, blocked_uri = delivered(tmp_path / "other", "b.json", 8_000)
    first = tmp_path / "checkpoints" / "readings"
    write_log(first, "0", [(copied_uri, 7_000, 0), (twin_uri, 6_000, 0), (blocked_uri, 8_000, 0)])
    mark(first, "offsets", 0)
    mark(first, "commits", 0)
    # a file where the archive needs a folder: moving `blocked` fails
    (archive / str(blocked.parent).lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    (archive / str(blocked.parent).lstrip("/")).write_text("in the way")
    with caplog.at_level(logging.WARNING, logger="streaming.ingestion_log"):
        kept = ingestion_log.rotate_if_due(cfg)
    assert kept == ingestion_log.Rotation(Generation(str(first), 0))
    assert "not rotated, a processed file could not be archived" in caplog.text
    assert not (tmp_path / "checkpoints" / f"{PREFIX}1").exists()
    assert not copied.exists() and target.is_file()  # the cut-short move was finished first
    assert blocked.exists()

    (archive / str(blocked.parent).lstrip("/")).unlink()
    done = ingestion_log.rotate_if_due(cfg)
    assert done.rotated and done.archived == 1 and done.left == (str(twin),)
    assert twin.read_text() == '{"v": 2.0}' and archived_twin.read_text() == '{"v": 1.0}'
    assert ingestion_log.archive_path(archive, blocked).is_file() and not blocked.exists()


class FakeQuery:
    """What `runner.await_query` asks of a StreamingQuery: each poll
    (`awaitTermination`) moves to the next trigger state of `triggers`."""

    def __init__(self, triggers: list[bool]) -> None:
        self.active = True
        self.triggers = iter(triggers)
        self.trigger_active = False
        self.stopped = False

    @property
    def isActive(self) -> bool:  # pyspark's names
        return self.active

    @property
    def status(self) -> dict[str, bool]:
        return {"isTriggerActive": self.trigger_active}

    def awaitTermination(self, timeout: float) -> bool:
        self.trigger_active = next(self.triggers, False)
        return not self.active

    def stop(self) -> None:
        self.active = False
        self.stopped = True

    def exception(self) -> None:
        return None


def test_the_service_restart_is_decided_between_triggers_and_stops_the_query() -> None:
    query = FakeQuery([True, True, False, True, False])
    seen: list[bool] = []  # the trigger state at each check

    def due() -> bool:
        seen.append(query.trigger_active)
        return len(seen) == 2

    pause = threading.Event()
    restarted = runner.await_query(
        query,  # type: ignore[arg-type]
        runner.StopSignal(),
        poll_seconds=0.01,
        restart=(due, 0.0, pause),
    )
    assert restarted and query.stopped and pause.is_set()
    assert seen == [False, False]  # never while a trigger lists files and plans its batch


def test_a_failing_restart_check_stops_the_query_and_raises() -> None:
    query = FakeQuery([False])

    def broken() -> bool:
        raise RuntimeError("unreadable log")

    with pytest.raises(RuntimeError, match="unreadable log"):
        runner.await_query(query, runner.StopSignal(), 0.01, (broken, 0.0, threading.Event()))  # type: ignore[arg-type]
    assert query.stopped


def test_a_stop_during_the_restart_wins() -> None:
    query = FakeQuery([False])
    stop = runner.StopSignal()

    def due_and_stopped() -> bool:
        stop.event.set()  # SIGTERM arrives as the restart is decided
        return True

    assert not runner.await_query(query, stop, 0.01, (due_and_stopped, 0.0, threading.Event()))  # type: ignore[arg-type]
    assert query.stopped


def test_a_redelivery_under_a_read_name_of_a_committed_batch_is_renamed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Spark's file source reads a path once: a logged file of a committed batch whose
    modification time changed is given a new name, which the source reads as new.
    Unchanged files, files of a batch not yet committed and vanished files stay."""
    readings = tmp_path / "read ings"
    cfg = make_config(tmp_path, readings=readings)
    _, changed_uri = delivered(readings, "changed.json", 9_000)  # logged at 4_000
    _, same_uri = delivered(readings, "same.json", 5_000)
    _, planned_uri = delivered(readings, "planned.json", 8_000)  # logged at 2_000 for batch 1
    checkpoint = Path(cfg.checkpoints) / "readings"
    write_log(checkpoint, "0", [(changed_uri, 4_000, 0), (same_uri, 5_000, 0)])
    write_log(checkpoint, "1", [(planned_uri, 2_000, 1), ("file://" + str(readings / "gone.json"), 1, 1)])
    mark(checkpoint, "offsets", 0)
    mark(checkpoint, "commits", 0)
    mark(checkpoint, "offsets", 1)  # planned, not committed: Spark reads it as it is now

    with caplog.at_level(logging.WARNING, logger="streaming.ingestion_log"):
        renamed = ingestion_log.rename_redeliveries(cfg)

    assert [p.name for p in renamed] == ["changed.redelivered-9000.json"]
    assert sorted(p.name for p in readings.iterdir()) == [
        "changed.redelivered-9000.json",
        "planned.json",
        "same.json",
    ]
    assert renamed[0].stat().st_mtime_ns == 9_000 * 1_000_000
    assert "delivered again under a name already read" in caplog.text
    assert ingestion_log.rename_redeliveries(cfg) == []  # nothing left to rename


def test_a_correction_delivered_under_the_name_already_read_replaces_the_reading(
    spark: SparkSession, tmp_path: Path
) -> None:
    """The contract: a delivery with a different value is a correction, whatever the
    file is called. A file placed again under its name (written aside, renamed over
    it) is read by the next run, and its values win in staging."""
    summary = write_sample(tmp_path / "data", SampleSpec(meterpoints=2, days=1))
    readings = Path(summary["readings_dir"])
    cfg = make_config(tmp_path, readings=readings, db=tmp_path / "data" / "case_study.db")
    runner.run(cfg, spark=spark)
    target = sorted(readings.glob("readings_2021-01-01_*.json"))[0]
    doc = json.loads(target.read_text())
    at = doc["columns"].index("consumption_delta")
    for row in doc["data"]:
        row[at] = 7.25
    aside = readings / f".{target.name}.tmp"
    aside.write_text(json.dumps(doc))
    later = target.stat().st_mtime_ns + 60_000_000_000
    os.utime(aside, ns=(later, later))
    os.replace(aside, target)

    second = runner.run(cfg, spark=spark)

    assert [b["rows"] for b in second.batches] == [len(doc["data"])]
    assert second.batches[0]["staged_corrected"] > 0
    tables = read_tables(spark, cfg.lake, ["staging/readings", "raw/readings"])
    mp = doc["data"][0][doc["columns"].index("meterpoint_id")]
    theirs = [
        r for r in tables["staging/readings"] if r["meterpoint_id"] == mp and r["reading_date"].day == 1
    ]
    assert theirs and all(r["consumption_kwh"] == 7.25 for r in theirs)
    renamed = f"{target.stem}.redelivered-{later // 1_000_000}.json"
    assert {Path(r["source_file"]).name for r in tables["raw/readings"] if r["batch_id"] == 1} == {renamed}
    assert not target.exists() and (readings / renamed).exists()


def test_redeliveries_archived_unread_failing_or_after_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spark's cleaner archives the last batch's files when the next batch begins,
    whatever they hold: an archived copy whose time is not the logged one is moved
    back under a new name. A file that cannot be renamed, or whose new name is
    taken, is left with a warning (no error stops the run). Committed batches are
    told by the offsets, also when a crash left Spark's batch ids behind the log's."""
    readings = tmp_path / "readings"
    cfg, archive = archiving_config(tmp_path, readings)
    checkpoint = Path(cfg.checkpoints) / "readings"
    uris = {}
    for name, mtime in [("in_archive.json", 9_000), ("archived.json", 3_000), ("locked.json", 7_000)]:
        path, uris[name] = delivered(readings, name, mtime)
        if name != "locked.json":
            copy = ingestion_log.archive_path(archive, path)
            copy.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, copy)
    _, uris["taken.json"] = delivered(readings, "taken.json", 6_000)
    delivered(readings, "taken.redelivered-6000.json", 6_000)
    _, uris["planned.json"] = delivered(readings, "planned.json", 8_000)
    # log ids 0-2 were read by Spark's batches 0 and 1 (a crash made batch 1 take two
    # ids); log id 3 is planned for batch 2, which has not been committed
    write_log(checkpoint, "0", [(uris["in_archive.json"], 4_000, 0)])
    write_log(checkpoint, "1", [(uris["archived.json"], 3_000, 1)])
    write_log(checkpoint, "2", [(uris["locked.json"], 1_000, 2), (uris["taken.json"], 2_000, 2)])
    write_log(checkpoint, "3", [(uris["planned.json"], 5_000, 3)])
    mark(checkpoint, "offsets", 0, 0)
    mark(checkpoint, "commits", 0)
    mark(checkpoint, "offsets", 1, 2)
    mark(checkpoint, "commits", 1)
    mark(checkpoint, "offsets", 2, 3)
    real_rename = os.rename

    def rename(source: Any, target: Any) -> None:
        if Path(source).name == "locked.json":
            raise PermissionError(13, "Permission denied")
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", rename)
    with caplog.at_level(logging.WARNING, logger="streaming.ingestion_log"):
        renamed = ingestion_log.rename_redeliveries(cfg)

    assert [p.name for p in renamed] == ["in_archive.redelivered-9000.json"]
    assert renamed[0].parent == readings and renamed[0].stat().st_mtime_ns == 9_000 * 1_000_000
    assert sorted(p.name for p in readings.iterdir()) == [
        "in_archive.redelivered-9000.json",
        "locked.json",
        "planned.json",
        "taken.json",
        "taken.redelivered-6000.json",
    ]
    assert ingestion_log.archive_path(archive, readings / "archived.json").exists()  # as logged
    assert "cannot be renamed" in caplog.text and "Permission denied" in caplog.text
    assert "taken.redelivered-6000.json exists" in caplog.text
