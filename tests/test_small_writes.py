"""Presentation refreshes written by delta-rs: the same table Spark writes, read, compacts and vacuums."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from conftest import commits
from deltalake import DeltaTable as RsTable
from deltalake.exceptions import DeltaError, TableNotFoundError
from pyspark.sql import DataFrame, SparkSession

from streaming import schemas, sinks, small_writes
from streaming.maintenance import maintain

WINTER, SUMMER = date(2021, 1, 1), date(2021, 7, 1)


def half_hours(spark: SparkSession, day: date, kwh: float, slots: int = 48) -> DataFrame:
    """One local day of half-hour totals; in summer local midnight is 23:00 UTC the day before."""
    offset = timedelta(hours=1) if day.month in (4, 5, 6, 7, 8, 9) else timedelta(0)
    midnight = datetime(day.year, day.month, day.day)
    rows = [
        (
            (midnight + timedelta(minutes=30 * i) - offset).replace(tzinfo=UTC),
            midnight + timedelta(minutes=30 * i),
            i + 1,
            kwh * (i + 1),
        )
        for i in range(slots)
    ]
    return spark.createDataFrame(rows, schemas.HALF_HOUR_TOTALS)


def table_rows(spark: SparkSession, path: str) -> list[tuple]:
    return sorted(tuple(r) for r in spark.read.format("delta").load(path).collect())


def test_date_predicate_selects_local_days_and_joins_consecutive_ones() -> None:
    days = [date(2021, 1, 3), date(2021, 1, 1), date(2021, 1, 2), date(2021, 1, 5), date(2021, 1, 2)]
    assert small_writes.date_predicate("date", "date", days) == (
        """("date" >= '2021-01-01' AND "date" < '2021-01-04')"""
        """ OR ("date" >= '2021-01-05' AND "date" < '2021-01-06')"""
    )
    assert small_writes.date_predicate("interval_start_local", "timestamp", [date(2021, 12, 31)]) == (
        """("interval_start_local" >= '2021-12-31 00:00:00'"""
        """ AND "interval_start_local" < '2022-01-01 00:00:00')"""
    )
    with pytest.raises(ValueError, match="no dates"):
        small_writes.date_predicate("date", "date", [])
    with pytest.raises(ValueError, match="column_type"):
        small_writes.date_predicate("date", "datetime", [WINTER])


def test_delta_rs_commits_only_small_writes_to_a_local_lake() -> None:
    month = [WINTER + timedelta(days=i) for i in range(small_writes.MAX_DATES)]
    choose = sinks.writer_for
    assert choose("auto", "/data/lake/t", dates=[WINTER]) == "delta-rs"
    assert choose("auto", "file:///data/lake/t", dates=month) == "delta-rs"
    assert choose("auto", "/data/lake/t", dates=[*month, month[-1] + timedelta(days=1)]) == "spark"
    assert choose("auto", "/data/lake/t", rows=small_writes.MAX_ROWS) == "delta-rs"
    assert choose("auto", "/data/lake/t", rows=small_writes.MAX_ROWS + 1) == "spark"
    assert choose("auto", "s3a://bucket/lake/t", rows=1) == "spark"
    assert choose("auto", "abfss://c@account.dfs.core.windows.net/lake/t", dates=[WINTER]) == "spark"
    assert choose("spark", "/data/lake/t", rows=1) == "spark"
    with pytest.raises(ValueError, match="small_writes must be one of"):
        choose("delta-rs", "/data/lake/t", rows=1)
    assert choose("auto", "hdfs:/data/lake/t", rows=1) == "spark"
    assert choose("auto", "data/lake/t", rows=1) == "spark"  # Spark resolves it against fs.defaultFS
    local = small_writes.local_path
    assert local("/data/lake/t") == "/data/lake/t"
    assert local("file:///data/lake/t") == local("file:/data/lake/t") == "/data/lake/t"
    assert local("file://localhost/data/my%20lake") == "/data/my lake"
    assert local("file://otherhost/data/lake") is None
    assert local("C:/data/lake") is None


def test_delta_rs_never_creates_a_table_the_pipeline_did_not(spark: SparkSession, tmp_path: Path) -> None:
    missing = tmp_path / "lake" / "presentation" / "total_consumption_half_hour"
    with pytest.raises(TableNotFoundError):
        sinks.replace_dates(
            spark, str(missing), sinks.HALF_HOUR, half_hours(spark, WINTER, 1.0), [WINTER], writer="delta-rs"
        )
    assert not (missing / "_delta_log").exists()


def test_delta_rs_and_spark_write_the_same_rows_and_schema(spark: SparkSession, tmp_path: Path) -> None:
    table = sinks.HALF_HOUR
    written = {}
    for writer in ("spark", "delta-rs"):
        lake = sinks.LakePaths(str(tmp_path / writer))
        sinks.create_tables(spark, lake, [table])
        fresh = half_hours(spark, WINTER, 0.25).unionByName(half_hours(spark, SUMMER, 0.5))
        sinks.replace_dates(spark, lake(table), table, fresh, [WINTER, SUMMER], append=True, writer=writer)
        sinks.replace_dates(
            spark, lake(table), table, half_hours(spark, SUMMER, 1.0, slots=3), [SUMMER], writer=writer
        )
        written[writer] = (
            table_rows(spark, lake(table)),
            spark.read.format("delta").load(lake(table)).schema,
        )
    assert written["delta-rs"] == written["spark"]
    rows, schema = written["delta-rs"]
    assert len(rows) == 48 + 3
    assert schema == schemas.HALF_HOUR_TOTALS  # names, types and NOT NULL as created


def test_delta_rs_refuses_a_row_outside_the_replaced_dates_and_changes_nothing(
    spark: SparkSession, tmp_path: Path
) -> None:
    lake = sinks.LakePaths(str(tmp_path / "lake"))
    table = sinks.HALF_HOUR
    sinks.create_tables(spark, lake, [table])
    sinks.replace_dates(
        spark, lake(table), table, half_hours(spark, WINTER, 0.25), [WINTER], writer="delta-rs"
    )
    before = table_rows(spark, lake(table))
    version = RsTable(lake(table)).version()
    stray = half_hours(spark, WINTER, 9.0).unionByName(half_hours(spark, SUMMER, 9.0, slots=1))
    with pytest.raises(DeltaError, match="failed validation"):
        sinks.replace_dates(spark, lake(table), table, stray, [WINTER], writer="delta-rs")
    assert RsTable(lake(table)).version() == version
    assert table_rows(spark, lake(table)) == before


def test_spark_reads_compacts_and_vacuums_what_delta_rs_wrote_and_delta_rs_goes_on_after(
    spark: SparkSession, tmp_path: Path
) -> None:
    lake = sinks.LakePaths(str(tmp_path / "lake"))
    table = sinks.HALF_HOUR
    sinks.create_tables(spark, lake, [table])  # created by Spark (test_lake_creation: by delta-rs)
    days = [WINTER + timedelta(days=i) for i in range(4)]
    for i, day in enumerate(days):
        sinks.replace_dates(
            spark, lake(table), table, half_hours(spark, day, 0.1 * i), [day], append=True, writer="delta-rs"
        )
    for kwh in (2.0, 3.0, 4.0, 5.0, 6.0, 7.0):  # versions 5..10: 7.0 stays
        sinks.replace_dates(
            spark, lake(table), table, half_hours(spark, days[0], kwh), [days[0]], writer="delta-rs"
        )
    # delta-rs checkpoints at version 10, as Spark's writer would (Spark reads it below)
    assert RsTable(lake(table)).version() == 10
    checkpoints = [p.name for p in (Path(lake(table)) / "_delta_log").glob("*.checkpoint.parquet")]
    assert checkpoints == ["00000000000000000010.checkpoint.parquet"]
    expected = sorted(
        [tuple(r) for r in half_hours(spark, days[0], 7.0).collect()]
        + [tuple(r) for i, day in enumerate(days[1:], 1) for r in half_hours(spark, day, 0.1 * i).collect()]
    )
    assert table_rows(spark, lake(table)) == expected

    result = maintain(spark, lake, retain_hours=168, names=[table])
    assert result[table]["files_after"] < result[table]["files_before"]
    assert table_rows(spark, lake(table)) == expected

    # delta-rs replaces a date in the file Spark's OPTIMIZE wrote
    sinks.replace_dates(
        spark, lake(table), table, half_hours(spark, days[1], 5.0), [days[1]], writer="delta-rs"
    )
    expected = sorted(
        [r for r in expected if r[1].date() != days[1]]
        + [tuple(r) for r in half_hours(spark, days[1], 5.0).collect()]
    )
    assert table_rows(spark, lake(table)) == expected
    # and delta-rs reads the table Spark compacted as Spark does
    by_rs = RsTable(lake(table)).to_pyarrow_table().to_pylist()
    assert sorted((r["interval_start_local"], r["total_kwh"]) for r in by_rs) == sorted(
        (r[1], r[3]) for r in expected
    )


def raw_batch(spark: SparkSession, batch_id: int, columns: dict[str, list[str | None]]) -> DataFrame:
    """Raw rows as `Pipeline._write_raw` builds them: the file's columns (strings), then the meta columns."""
    n = len(next(iter(columns.values())))
    at = datetime(2026, 11, 29, 12, 0)
    rows = [
        (*[values[i] for values in columns.values()], f"f{batch_id}.json", at, at, batch_id) for i in range(n)
    ]
    schema = ", ".join(f"`{c}` string" for c in columns)
    return spark.createDataFrame(
        rows,
        f"{schema}, source_file string, file_modification_time timestamp,"
        " ingested_at timestamp, batch_id long",
    )


def test_raw_appends_by_either_writer_merge_new_columns_alike_and_are_skipped_when_replayed(
    spark: SparkSession, tmp_path: Path
) -> None:
    batches = [
        raw_batch(
            spark,
            0,
            {"interval_start": ["2021-01-01 00:00:00"], "consumption_delta": ["0.5"], "meterpoint_id": ["a"]},
        ),
        # a file with an extra column, and one column missing
        raw_batch(
            spark,
            1,
            {"consumption_delta": ["0.25"], "interval_start": ["2021-01-01 00:30:00"], "note": ["x"]},
        ),
        # the same column in other letters is that column, as in Spark's schema merge
        raw_batch(spark, 2, {"NOTE": ["y"], "Meterpoint_ID": ["b"]}),
    ]
    written = {}
    for writer in ("spark", "delta-rs"):
        lake = sinks.LakePaths(str(tmp_path / writer))
        sinks.create_tables(spark, lake, [sinks.RAW_READINGS])
        path = lake(sinks.RAW_READINGS)
        for batch_id, df in enumerate(batches):
            sinks.append_idempotent(df, path, "query-1", batch_id, merge_schema=True, writer=writer)
        # a replayed batch (either writer) and an older one: nothing is written
        for again in ("spark", "delta-rs"):
            sinks.append_idempotent(batches[1], path, "query-1", 1, merge_schema=True, writer=again)
            sinks.append_idempotent(batches[0], path, "query-1", 0, merge_schema=True, writer=again)
        table = spark.read.format("delta").load(path)
        engines = {engine for _, engine in commits(spark, path)}
        written[writer] = (table.schema, sorted((tuple(r) for r in table.collect()), key=repr), engines)
    assert written["spark"][:2] == written["delta-rs"][:2]
    schema, rows, _ = written["delta-rs"]
    assert schema.fieldNames()[-1] == "note" and len(rows) == 3
    assert written["spark"][2] == {"Apache-Spark"} and written["delta-rs"][2] == {"delta-rs"}
    # another query (a new checkpoint) is not taken for a replay
    sinks.append_idempotent(
        batches[0], lake(sinks.RAW_READINGS), "query-2", 0, merge_schema=True, writer="delta-rs"
    )
    assert spark.read.format("delta").load(lake(sinks.RAW_READINGS)).count() == 4


def test_a_default_file_system_other_than_the_local_one_sends_every_write_to_spark(
    spark: SparkSession,
) -> None:
    """With `fs.defaultFS` on HDFS, Spark reads a plain path `/lake/...` there, not here."""
    hadoop = spark.sparkContext._jsc.hadoopConfiguration()  # type: ignore[union-attr]
    before = hadoop.get("fs.defaultFS")
    try:
        hadoop.set("fs.defaultFS", "hdfs://namenode:8020")
        assert sinks.small_writes_setting(spark, "auto") == "spark"
    finally:
        hadoop.set("fs.defaultFS", before)
    assert sinks.small_writes_setting(spark, "auto") == "auto"
    assert sinks.small_writes_setting(spark, "spark") == "spark"
