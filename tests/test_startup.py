"""Start-up: the lake's preparation beside the query's start, and the class-data archive."""

from __future__ import annotations

import shutil
import sqlite3
import time
from datetime import date
from pathlib import Path

import pytest
from conftest import make_config
from pyspark.sql import SparkSession

from streaming import runner, session
from streaming.batch import Pipeline
from streaming.generator import SampleSpec, write_sample

SPEC = SampleSpec(meterpoints=6, days=1, start=date(2021, 1, 1))


def test_the_first_batch_waits_for_the_start_up_that_runs_beside_the_query_start(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = write_sample(tmp_path / "data", SPEC)
    data = tmp_path / "data"
    cfg = make_config(tmp_path, readings=data / "readings", db=data / "case_study.db")
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
    staged = spark.read.format("delta").load(f"{cfg.lake}/staging/readings").count()
    assert staged == sum(d["readings"] for d in summary["dates"].values())


def test_a_database_without_a_table_fails_the_run_with_its_own_one_line_error(
    spark: SparkSession, tmp_path: Path
) -> None:
    write_sample(tmp_path / "data", SPEC)
    db = tmp_path / "broken.db"
    shutil.copy(tmp_path / "data" / "case_study.db", db)
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE product")
    cfg = make_config(tmp_path, readings=tmp_path / "data" / "readings", db=db)

    with pytest.raises(runner.PipelineError) as failed:
        runner.run(cfg, spark=spark)

    # the start-up's error, not the query failure it causes beside it
    message = str(failed.value)
    expected = f"dimension database {db} has no table 'product' (expected agreement, product, meterpoint)"
    assert message == expected
    staging = Path(cfg.lake) / "staging" / "readings"
    assert not list(staging.glob("**/*.parquet")), "a batch wrote staging without dimensions"
    assert not (Path(cfg.readings_checkpoint) / "commits" / "0").exists()


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
