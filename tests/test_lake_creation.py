"""A local lake's start-up by delta-rs: the same tables Spark makes, and Spark writes them after.

Under `small_writes = "auto"` a lake on the local file system is created, and its
dimensions landed and their stamps read, by delta-rs (a few ms a table) instead
of a cold JVM's Spark. These tests hold it to what Spark makes: the same protocol,
schema, partitioning and rows, stamps either reader finds, and tables Spark then
appends to, MERGEs, replaces, compacts and vacuums.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config
from deltalake import DeltaTable as RsTable
from deltalake import Schema as RsSchema
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from test_sinks import frame, reading

from streaming import dimensions, schemas, sinks, small_writes
from streaming.batch import Pipeline
from streaming.generator import SampleSpec, write_sample
from streaming.maintenance import maintain

SPEC = SampleSpec(meterpoints=4, days=1)
RAW_DIMENSIONS = [f"raw/{name}" for name in dimensions.TABLES]


def table_shape(path: str) -> dict[str, Any]:
    """What a table is, apart from its data: protocol, schema, partitioning, properties."""
    table = RsTable(path)
    protocol = table.protocol()
    return {
        "versions": (protocol.min_reader_version, protocol.min_writer_version),
        "reader_features": sorted(protocol.reader_features or ()),
        "writer_features": sorted(protocol.writer_features or ()),
        "schema": json.loads(table.schema().to_json()),
        "partitions": table.metadata().partition_columns,
        "configuration": table.metadata().configuration,
    }


def engines(path: str) -> set[str]:
    """The product that made each commit of the table, creation included."""
    return {str(c.get("engineInfo")).split("/")[0].split(":")[0] for c in RsTable(path).history()}


def rows(path: str) -> list[tuple[Any, ...]]:
    return sorted((tuple(r.values()) for r in RsTable(path).to_pyarrow_table().to_pylist()), key=repr)


@pytest.fixture(scope="module")
def lakes(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pipeline]:
    """One sample's lake prepared by each writer (a new lake: tables, dimensions, stamps)."""
    tmp = tmp_path_factory.mktemp("creation")
    write_sample(tmp / "data", SPEC)
    made = {}
    for setting in ("spark", "auto"):
        cfg = make_config(
            tmp / setting,
            readings=tmp / "data" / "readings",
            db=tmp / "data" / "case_study.db",
            small_writes=setting,
        )
        pipeline = Pipeline(spark, cfg)
        pipeline.prepare()
        made[setting] = pipeline
    return made


def test_delta_rs_makes_the_lake_spark_makes(spark: SparkSession, lakes: dict[str, Pipeline]) -> None:
    by_spark, by_rs = lakes["spark"], lakes["auto"]
    assert (by_spark.lake_writer, by_rs.lake_writer) == ("spark", "delta-rs")
    names = [*sinks.TABLES, *RAW_DIMENSIONS]
    for name in names:
        assert table_shape(by_rs.lake(name)) == table_shape(by_spark.lake(name)), name
        assert rows(by_rs.lake(name)) == rows(by_spark.lake(name)), name
        assert engines(by_spark.lake(name)) == {"Apache-Spark"}, name
        assert engines(by_rs.lake(name)) == {"delta-rs"}, name
    # NOT NULL columns make Spark list the writer-version-2 features (staging
    # needs a TIMESTAMP_NTZ column, so it uses table features)
    assert set(table_shape(by_rs.lake(sinks.STAGING))["writer_features"]) == {
        "appendOnly",
        "invariants",
        "timestampNtz",
    }
    # the dimensions were landed, and the stamps read the same by either reader
    assert rows(by_rs.lake("raw/meterpoint"))  # the sample's meterpoints
    fingerprint = by_rs.dims.fingerprint if by_rs.dims else None
    for pipeline in (by_spark, by_rs):
        for name in RAW_DIMENSIONS:
            for reader in ("spark", "delta-rs"):
                stamp = dimensions.landed_metadata(spark, pipeline.lake(name), reader)
                assert stamp == {"source_fingerprint": fingerprint}, (name, reader)
        active = pipeline.lake(sinks.ACTIVE_AGREEMENTS)
        assert dimensions.landed_metadata(spark, active, "delta-rs") == dimensions.landed_metadata(
            spark, active, "spark"
        )
        assert dimensions.landed_metadata(spark, active, "delta-rs")["source_fingerprint"] == fingerprint


def test_a_restart_commits_nothing_whoever_made_the_lake(
    spark: SparkSession, lakes: dict[str, Pipeline]
) -> None:
    names = [*sinks.TABLES, *RAW_DIMENSIONS]
    # the stamps are found behind commits that carry none (OPTIMIZE, VACUUM)
    maintain(spark, lakes["auto"].lake, retain_hours=168.0, names=[*RAW_DIMENSIONS, sinks.ACTIVE_AGREEMENTS])
    for made_by, restarted_with in (("auto", "auto"), ("spark", "auto"), ("auto", "spark")):
        lake = lakes[made_by].lake
        versions = {name: RsTable(lake(name)).version() for name in names}
        Pipeline(spark, replace(lakes[made_by].cfg, small_writes=restarted_with)).prepare()
        after = {name: RsTable(lake(name)).version() for name in names}
        assert after == versions, (made_by, restarted_with)


def test_spark_writes_compacts_and_vacuums_tables_delta_rs_created(
    spark: SparkSession, tmp_path: Path
) -> None:
    lake = sinks.LakePaths(str(tmp_path / "lake"))
    sinks.create_tables(spark, lake, list(sinks.TABLES), writer="delta-rs")
    staging = lake(sinks.STAGING)
    day = date(2021, 1, 1)
    # Spark's own append, then its MERGE (a changed value), as a backfill's batches do
    first = sinks.merge_staging(spark, staging, frame(spark, [reading("a", day, 0, 0.5)]), [day])
    first.release()
    second = sinks.merge_staging(
        spark,
        staging,
        frame(spark, [reading("a", day, 0, 0.75), reading("b", day, 1, 0.25)]),
        [day],
    )
    second.release()
    assert (first.inserted, second.inserted, second.updated) == (1, 1, 1)
    assert engines(staging) == {"delta-rs", "Apache-Spark"}
    staged = {
        (r.meterpoint_id, r.consumption_kwh) for r in spark.read.format("delta").load(staging).collect()
    }
    assert staged == {("a", 0.75), ("b", 0.25)}
    # NOT NULL holds for Spark's writes to a table delta-rs created
    no_id = frame(spark, [reading("c", day, 2, 1.0)]).withColumn("meterpoint_id", F.lit(None).cast("string"))
    with pytest.raises(Exception, match="meterpoint_id"):
        no_id.write.format("delta").mode("append").save(staging)
    # a presentation table replaced by Spark, raw appended by Spark
    half_hour = lake(sinks.HALF_HOUR)
    totals = spark.createDataFrame(
        [(datetime(2021, 1, 1, tzinfo=UTC), datetime(2021, 1, 1), 2, 1.0)], schemas.HALF_HOUR_TOTALS
    )
    sinks.replace_dates(spark, half_hour, sinks.HALF_HOUR, totals, [day])
    raw = spark.createDataFrame(
        [("2021-01-01 00:00:00", "0.5", "a", "f.json", datetime(2021, 1, 1), datetime(2021, 1, 2), 0)],
        sinks.TABLES[sinks.RAW_READINGS][0],
    )
    sinks.append_idempotent(raw, lake(sinks.RAW_READINGS), "query-1", 0)
    assert spark.read.format("delta").load(lake(sinks.RAW_READINGS)).count() == 1
    done = maintain(spark, lake, retain_hours=168.0, names=[sinks.STAGING, sinks.HALF_HOUR])
    assert set(done) == {sinks.STAGING, sinks.HALF_HOUR}
    assert {
        (r.meterpoint_id, r.consumption_kwh) for r in spark.read.format("delta").load(staging).collect()
    } == staged
    assert spark.read.format("delta").load(half_hour).count() == 1


def test_a_creation_cut_short_is_completed_at_the_next_start(
    spark: SparkSession, lakes: dict[str, Pipeline], tmp_path: Path
) -> None:
    """delta-rs creates a table in one commit and lists Spark's features in a second:
    a crash between them leaves a table Spark refuses to write, until the next
    start completes it."""
    cfg = replace(lakes["auto"].cfg, lake=str(tmp_path / "lake"))
    lake = sinks.LakePaths(cfg.lake)
    staging = lake(sinks.STAGING)
    schema, partitions = sinks.TABLES[sinks.STAGING]
    RsTable.create(staging, schema=RsSchema.from_json(schema.json()), partition_by=list(partitions))
    day = date(2021, 1, 1)
    row = frame(spark, [reading("a", day, 0, 0.5)])
    with pytest.raises(Exception, match="DELTA_FEATURES_PROTOCOL_METADATA_MISMATCH"):
        row.write.format("delta").mode("append").save(staging)
    Pipeline(spark, cfg).prepare()
    assert RsTable(staging).version() == 1  # the features' commit, nothing else
    assert table_shape(staging) == table_shape(lakes["spark"].lake(sinks.STAGING))
    row.write.format("delta").mode("append").save(staging)
    sinks.create_tables(spark, lake, [sinks.STAGING], writer="delta-rs")  # complete: no commit
    assert RsTable(staging).version() == 2
    assert spark.read.format("delta").load(staging).count() == 1


def test_a_crash_part_way_through_the_landing_lands_every_table_again(
    spark: SparkSession, lakes: dict[str, Pipeline], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart checks one table's stamp, so that table is landed last: a crash after
    another leaves its old stamp, and the next start lands all three again."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(lakes["auto"].cfg.db, data / "case_study.db")
    cfg = replace(lakes["auto"].cfg, lake=str(tmp_path / "lake"), db=str(data / "case_study.db"))
    Pipeline(spark, cfg).prepare()
    with sqlite3.connect(cfg.db) as con:  # the database changes
        con.execute("UPDATE product SET display_name = display_name || ' (new)'")
        con.execute("UPDATE meterpoint SET region = 'Elsewhere'")
    con.close()
    landed: list[str] = []
    overwrite = small_writes.overwrite

    def crash_on_the_second_landing(path: str, *args: Any, **kwargs: Any) -> None:
        if "/raw/" in path:
            landed.append(path)
            if len(landed) == 2:
                raise RuntimeError("simulated crash")
        overwrite(path, *args, **kwargs)

    monkeypatch.setattr(small_writes, "overwrite", crash_on_the_second_landing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        Pipeline(spark, cfg).prepare()
    monkeypatch.undo()
    restarted = Pipeline(spark, cfg)
    restarted.prepare()
    assert restarted.dims is not None
    lake = sinks.LakePaths(cfg.lake)
    for name in RAW_DIMENSIONS:
        stamp = dimensions.landed_metadata(spark, lake(name), "delta-rs")
        assert stamp == {"source_fingerprint": restarted.dims.fingerprint}, name
    landed_rows = {name: RsTable(lake(name)).to_pyarrow_table() for name in RAW_DIMENSIONS}
    assert set(landed_rows["raw/meterpoint"]["region"].to_pylist()) == {"Elsewhere"}
    assert all(n.endswith(" (new)") for n in landed_rows["raw/product"]["display_name"].to_pylist() if n)


def test_raw_dimension_rows_in_arrow_are_the_rows_spark_lands(spark: SparkSession, tmp_path: Path) -> None:
    table = dimensions.SourceTable(
        "product",
        ("id", "display_name", "is_variable", "price", "blob"),
        ("INTEGER", "TEXT", "BOOLEAN", "REAL", ""),
        ((1, "Fixed", 0, 10, b"\x01\xff"), (2, None, 1, 12.5, None), (3, "Mixed", None, None, "text")),
    )
    arrow = dimensions.raw_arrow(table)
    by_spark = dimensions.raw_dataframe(spark, table)
    assert spark.createDataFrame(arrow).schema == by_spark.schema
    assert spark.createDataFrame(arrow).collect() == by_spark.collect()
    empty = dimensions.SourceTable("meterpoint", ("meterpoint_id", "region"), ("TEXT", "TEXT"), ())
    assert dimensions.raw_arrow(empty).num_rows == 0
    assert dimensions.raw_arrow(empty).schema.names == ["meterpoint_id", "region"]
    # an overwrite with other columns replaces the schema, as Spark's overwriteSchema does
    path = str(tmp_path / "raw" / "product")
    small_writes.overwrite(path, arrow, json.dumps({"source_fingerprint": "one"}))
    with pytest.raises(Exception, match="schema"):  # a different schema, unless asked
        small_writes.overwrite(path, dimensions.raw_arrow(empty), json.dumps({"source_fingerprint": "x"}))
    small_writes.overwrite(
        path, dimensions.raw_arrow(empty), json.dumps({"source_fingerprint": "two"}), overwrite_schema=True
    )
    assert spark.read.format("delta").load(path).columns == ["meterpoint_id", "region"]
    assert dimensions.landed_metadata(spark, path, "delta-rs") == {"source_fingerprint": "two"}
    assert small_writes.newest_user_metadata(str(tmp_path / "missing")) is None
