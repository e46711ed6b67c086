"""Start-up: the lake's preparation beside the query's start, and the class-data archive."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, make_config
from pyspark.sql import SparkSession

from streaming import ingestion_log, runner, session
from streaming.batch import Pipeline
from streaming.config import Config, load_config
from streaming.generator import SampleSpec, write_sample

SPEC = SampleSpec(meterpoints=6, days=1, start=date(2021, 1, 1))


def _sample_run(tmp_path: Path) -> tuple[dict[str, Any], Config]:
    """A small generated sample and a config reading it into a lake under `tmp_path`."""
    data = tmp_path / "data"
    summary = write_sample(data, SPEC)
    return summary, make_config(tmp_path, readings=data / "readings", db=data / "case_study.db")


def _all_staged(spark: SparkSession, cfg: Config, summary: dict[str, Any]) -> bool:
    staged = spark.read.format("delta").load(f"{cfg.lake}/staging/readings").count()
    return bool(staged == sum(d["readings"] for d in summary["dates"].values()))


def test_the_first_batch_waits_for_the_start_up_that_runs_beside_the_query_start(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary, cfg = _sample_run(tmp_path)
    events: dict[str, float] = {}
    prepare, process, start_query = Pipeline.prepare, Pipeline._process, runner.start_query

    def slow_prepare(self: Pipeline) -> None:
        events["prepare_started"] = time.monotonic()
        time.sleep(3)  # a slow cold start: the query must not wait for it to start
        prepare(self)
        events["prepare_done"] = time.monotonic()

    def timed_process(self: Pipeline, *args: object) -> None:
        events.setdefault("batch_started", time.monotonic())
        assert self.dims is not None, "a batch ran before the dimensions were loaded"
        process(self, *args)  # type: ignore[arg-type]

    def timed_start(*args: object, **kwargs: object) -> object:
        events["query_started"] = time.monotonic()
        return start_query(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Pipeline, "prepare", slow_prepare)
    monkeypatch.setattr(Pipeline, "_process", timed_process)
    monkeypatch.setattr(runner, "start_query", timed_start)

    pipeline = runner.run(cfg, spark=spark)

    assert events["prepare_started"] < events["query_started"] < events["prepare_done"]
    assert events["batch_started"] >= events["prepare_done"]
    assert len(pipeline.batches) == 1
    assert _all_staged(spark, cfg, summary)


def test_a_database_without_a_table_fails_the_run_with_its_own_one_line_error(
    spark: SparkSession, tmp_path: Path
) -> None:
    write_sample(tmp_path / "data", SPEC)
    db = _broken_db(tmp_path)
    cfg = make_config(tmp_path, readings=tmp_path / "data" / "readings", db=db)

    with pytest.raises(runner.PipelineError) as failed:
        runner.run(cfg, spark=spark)

    # the start-up's error, not the query failure it causes beside it
    message = str(failed.value)
    expected = f"dimension database {db} has no table 'product' (expected agreement, product, meterpoint)"
    assert message == expected
    staging = Path(cfg.lake) / "staging" / "readings"
    assert not list(staging.glob("**/*.parquet")), "a batch wrote staging without dimensions"
    assert not (Path(ingestion_log.current(cfg.checkpoints).path) / "commits" / "0").exists()


def _broken_db(tmp_path: Path) -> Path:
    db = tmp_path / "broken.db"
    shutil.copy(tmp_path / "data" / "case_study.db", db)
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE product")
    return db


def test_a_failed_start_up_stops_a_service_that_has_nothing_to_process(
    spark: SparkSession, tmp_path: Path
) -> None:
    write_sample(tmp_path / "data", SPEC)
    db = _broken_db(tmp_path)
    empty = tmp_path / "empty"
    cfg = make_config(tmp_path, readings=empty, db=db)
    # no batch will run and the dimension check is an hour away: only the
    # start-up's own failure can end the service
    cfg = dataclasses.replace(cfg, trigger="processing-time", dims_check_seconds=3600.0)
    # a guard, not a timing: a service that ignored its failed start-up would run
    # for an hour; the guard stops it and the test fails
    fired = threading.Event()

    def stop_it() -> None:
        fired.set()
        os.kill(os.getpid(), signal.SIGTERM)

    guard = threading.Timer(120, stop_it)
    guard.start()
    try:
        with pytest.raises(runner.PipelineError, match="has no table 'product'"):
            runner.run(cfg, spark=spark)
    finally:
        guard.cancel()
    assert not fired.is_set(), "the service kept running after its start-up failed"


def test_a_stop_during_the_start_up_ends_the_run_before_the_first_batch_begins(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary, cfg = _sample_run(tmp_path)
    prepare = Pipeline.prepare

    def prepare_then_sigterm(self: Pipeline) -> None:
        # SIGTERM arrives while the lake starts up and batch 0 is being planned
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(2)
        prepare(self)

    monkeypatch.setattr(Pipeline, "prepare", prepare_then_sigterm)
    stopped = runner.run(cfg, spark=spark)  # a clean stop: no exception

    assert stopped.batches == []
    staging = Path(cfg.lake) / "staging" / "readings"
    assert not list(staging.glob("**/*.parquet"))
    assert not (Path(ingestion_log.current(cfg.checkpoints).path) / "commits" / "0").exists()

    monkeypatch.setattr(Pipeline, "prepare", prepare)
    resumed = runner.run(cfg, spark=spark)  # the next run processes the files
    assert len(resumed.batches) == 1
    assert _all_staged(spark, cfg, summary)


def test_a_stop_during_a_batch_lets_it_finish_and_commit_before_the_query_stops(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM while a processing-time batch writes: the batch finishes, its
    commit is in the checkpoint (so the next run does not replay it), exit clean."""
    summary, cfg = _sample_run(tmp_path)
    cfg = dataclasses.replace(cfg, trigger="processing-time", processing_interval="1 second")
    process = Pipeline._process

    def sigterm_mid_batch(self: Pipeline, *args: Any) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(2)  # the runner sees the stop while the batch is still writing
        process(self, *args)

    monkeypatch.setattr(Pipeline, "_process", sigterm_mid_batch)
    stopped = runner.run(cfg, spark=spark)  # a clean stop: no exception

    assert len(stopped.batches) == 1
    assert _all_staged(spark, cfg, summary)
    assert (Path(ingestion_log.current(cfg.checkpoints).path) / "commits" / "0").is_file()

    monkeypatch.setattr(Pipeline, "_process", process)
    again = dataclasses.replace(cfg, trigger="available-now")
    assert runner.run(again, spark=spark).batches == []  # nothing replayed


def test_signals_that_arrive_while_the_stop_is_being_set_cannot_deadlock_it() -> None:
    """Handlers run in the main thread between bytecodes, so a second SIGTERM (or a
    double Ctrl-C) can arrive inside `Event.set()` of the first: a handler that took
    the event's lock there hung the process for good. The handler now takes no lock."""
    import faulthandler

    previous = signal.getsignal(signal.SIGTERM)
    stop = runner.StopSignal()
    stop.install()
    faulthandler.dump_traceback_later(60, exit=True)  # a deadlock fails the run instead of hanging it
    try:
        with stop.event._cond:  # type: ignore[attr-defined]  # what an interrupted Event.set() holds
            os.kill(os.getpid(), signal.SIGTERM)  # each handler runs here, in this thread
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
        assert stop.event.wait(10)
        assert stop.stopping
    finally:
        faulthandler.cancel_dump_traceback_later()
        stop.restore()
    assert signal.getsignal(signal.SIGTERM) is previous
    assert signal.set_wakeup_fd(-1) == -1  # the wakeup pipe is gone with the handlers


def test_driver_options_keep_the_configured_ones_and_quote_the_archive_path() -> None:
    jars = ["file:///ivy/jars/io.delta_delta-spark_4.2_2.13-4.4.0.jar"]
    configured = {
        "spark.driver.extraJavaOptions": "-Dmine=1",
        "spark.driver.extraClassPath": "/opt/mine.jar",
    }
    archive = Path("/a b/spark-classes.jsa")

    used = session.driver_settings(configured, jars, archive)
    assert used["spark.driver.extraJavaOptions"] == (
        '-Dmine=1 "-XX:SharedArchiveFile=/a b/spark-classes.jsa" -Xlog:cds=off -Xlog:cds+dynamic=off'
    )
    assert (
        used["spark.driver.extraClassPath"]
        == "/opt/mine.jar:/ivy/jars/io.delta_delta-spark_4.2_2.13-4.4.0.jar"
    )

    dumping = session.driver_settings({}, jars, None, archive_to=Path("/x/new.jsa"))
    assert dumping["spark.driver.extraJavaOptions"].startswith('"-XX:ArchiveClassesAtExit=/x/new.jsa"')

    assert session.driver_settings(configured, jars, None) == {
        **configured,
        "spark.driver.extraClassPath": used["spark.driver.extraClassPath"],
    }
    assert session.driver_settings(configured, [], None) == configured  # jars not resolved yet


def test_a_driver_jvm_started_as_the_pipeline_starts_it_maps_the_archive_and_gets_the_jit_settings() -> None:
    """In a fresh JVM with -Xshare:on, which refuses to start when the archive
    cannot be mapped; without an archive (setup could not write one), the plain
    start is checked instead. The JIT thresholds and the collector of
    conf/pipeline.toml (`spark.driver.defaultJavaOptions`) are in force in that JVM beside the
    options of one's own (`extraJavaOptions`), read back from the JVM itself."""
    archive = session.class_archive(session.cached_delta_jars())
    assert "-XX:Tier4InvocationThreshold=150000" in load_config().spark["spark.driver.defaultJavaOptions"]
    options = "-Dmine=1 -Xshare:on" if archive is not None else "-Dmine=1"
    script = (
        "import json, sys; from streaming.config import load_config; "
        "from streaming.session import build_session; "
        "spark = build_session(load_config(spark={'spark.master': 'local[1]', "
        f"'spark.driver.extraJavaOptions': {options!r}}})); "
        "conf = spark.sparkContext.getConf(); "
        "jvm = spark.sparkContext._jvm; "
        "bean = jvm.java.lang.management.ManagementFactory.getPlatformMXBean("
        "jvm.java.lang.Class.forName('com.sun.management.HotSpotDiagnosticMXBean')); "
        "print(json.dumps([spark.range(3).count(), conf.get('spark.driver.extraJavaOptions'), "
        "bean.getVMOption('Tier4InvocationThreshold').getValue(), "
        "bean.getVMOption('UseParallelGC').getValue(), "
        "jvm.java.lang.System.getProperty('mine')])); "
        "spark.stop()"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    count, java_options, tier4, parallel_gc, mine = json.loads(done.stdout.strip().splitlines()[-1])
    assert count == 3
    assert tier4 == "150000"  # the JVM's default is 5000
    assert parallel_gc == "true"  # the default on this machine is G1
    assert mine == "1"  # one's own options still reach the JVM
    if archive is not None:
        assert f'-Xshare:on "-XX:SharedArchiveFile={archive}"' in java_options
    else:
        assert "SharedArchiveFile" not in (java_options or "")


def test_only_jars_spark_does_not_ship_go_on_the_driver_class_path() -> None:
    jars = [
        "file:///ivy/jars/io.delta_delta-spark_4.2_2.13-4.4.0.jar",
        "file:///ivy/jars/io.unitycatalog_unitycatalog-client-0.6.0.jar",
        "file:///ivy/jars/com.fasterxml.jackson.datatype_jackson-datatype-jdk8-2.13.5.jar",
        # older copies of jars Spark has: they must not shadow Spark's own
        "file:///ivy/jars/com.fasterxml.jackson.core_jackson-databind-2.13.5.jar",
        "file:///ivy/jars/org.apache.parquet_parquet-hadoop-1.16.0.jar",
        "file:///ivy/jars/commons-logging_commons-logging-1.3.0.jar",
    ]
    assert session.driver_class_path(jars) == [
        "/ivy/jars/io.delta_delta-spark_4.2_2.13-4.4.0.jar",
        "/ivy/jars/io.unitycatalog_unitycatalog-client-0.6.0.jar",
        "/ivy/jars/com.fasterxml.jackson.datatype_jackson-datatype-jdk8-2.13.5.jar",
    ]


def test_the_class_archive_is_used_only_when_it_was_made_for_these_jars(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / "spark-classes.jsa"
    monkeypatch.setattr(session, "_archive_path", lambda: archive)
    monkeypatch.delenv("SMART_METER_NO_CLASS_ARCHIVE", raising=False)
    jars = ["file:///ivy/jars/io.delta_delta-spark_4.2_2.13-4.4.0.jar"]

    assert session.class_archive(jars) is None  # none written
    archive.write_bytes(b"archive")
    assert session.class_archive(jars) is None  # no key: made for unknown jars
    archive.with_suffix(".key").write_text(session._archive_key(jars) + "\n")
    assert session.class_archive(jars) == archive
    assert session.class_archive([*jars, "file:///ivy/jars/io.delta_delta-storage-4.4.0.jar"]) is None
    assert session.class_archive([]) is None  # jars not resolved yet: the JVM's class path differs
    monkeypatch.setenv("SMART_METER_NO_CLASS_ARCHIVE", "1")
    assert session.class_archive(jars) is None


@pytest.mark.parametrize(
    "spelling",
    ["{p}", "file:{p}", "file://{p}", "file://localhost{p}", "file://localhost{q}"],
)
def test_one_checkpoint_folder_is_one_lock_however_its_location_is_spelled(
    tmp_path: Path, spelling: str
) -> None:
    """The lock file is `.lock` in the folder itself for every local spelling (a URI's
    host `localhost` and percent-escapes included), so a second pipeline given the
    same folder another way is refused, not run beside the first."""
    folder = tmp_path / "check points"
    other = spelling.format(p=folder, q=str(folder).replace(" ", "%20"))
    assert runner._lock_path(other) == folder / ".lock"
    with (
        runner.checkpoint_lock(str(folder)),
        pytest.raises(runner.CheckpointInUse, match=f"in use by pid {os.getpid()}"),
        runner.checkpoint_lock(other),
    ):
        pass
    with runner.checkpoint_lock(other):  # released with the first holder
        pass


def test_a_relative_or_remote_checkpoint_location_gets_its_own_lock_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert runner._lock_path("relative/cp") == Path("relative/cp/.lock")
    assert (tmp_path / "relative" / "cp").is_dir()
    # a colon after a slash is no scheme (Hadoop's rule too): still the folder itself
    assert runner._lock_path("relative/a:b") == Path("relative/a:b/.lock")
    remote = runner._lock_path("s3a://bucket/checkpoints")
    other_host = runner._lock_path("file://otherhost/checkpoints")
    locks = tmp_path / "home" / ".cache" / "smart-meter" / "locks"
    assert remote.parent == other_host.parent == locks
    assert remote != other_host
