"""The two writes every batch makes: staging (new, changed, equal rows) and presentation dates."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import commits
from deltalake import DeltaTable as RsTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import DateType, IntegerType, StructField, StructType

from streaming import schemas, sinks, small_writes

DAY1, DAY2, DAY3 = date(2021, 1, 1), date(2021, 1, 2), date(2021, 1, 3)
INGESTED = datetime(2026, 11, 29, 12, 0)


def reading(mp: str, day: date, slot: int, kwh: float, agreement: int | None = 1) -> dict[str, Any]:
    local = datetime(day.year, day.month, day.day) + timedelta(minutes=30 * slot)
    return {
        "meterpoint_id": mp,
        "interval_start": local.replace(tzinfo=UTC),  # winter: local time is UTC
        "interval_start_local": local,
        "reading_date": day,
        "consumption_kwh": kwh,
        "agreement_id": agreement,
        "product_id": 10 if agreement else None,
        "product_display_name": "Fixed" if agreement else None,
        "product_is_variable": False if agreement else None,
        "region": "North",
        "account_id": 7 if agreement else None,
        "source_file": "f.json",
        "ingested_at": INGESTED,
    }


def frame(spark: SparkSession, rows: list[dict[str, Any]]) -> DataFrame:
    fields = schemas.STAGING_READINGS.fieldNames()
    return spark.createDataFrame([tuple(r[f] for f in fields) for r in rows], schemas.STAGING_READINGS)


def staged(spark: SparkSession, path: str) -> dict[tuple[str, int], tuple[float, int | None]]:
    return {
        (r["meterpoint_id"], r["interval_start_local"].hour * 2 + r["interval_start_local"].minute // 30): (
            r["consumption_kwh"],
            r["agreement_id"],
        )
        for r in spark.read.format("delta").load(path).collect()
        if r["reading_date"] == DAY1
    }


@dataclass
class Written:
    """A staging write's counts, and the rows of its `written` (None where `written`
    is not valid after the write: see `StagingChange.written`)."""

    inserted: int
    updated: int
    dates_were_empty: bool
    rows: list[tuple] | None


def write(spark: SparkSession, path: str, rows: list[dict[str, Any]]) -> Written:
    dates = sorted({r["reading_date"] for r in rows})
    setting = path.setting if isinstance(path, StagingTable) else "spark"
    small = isinstance(path, StagingTable) and path.rows_known
    change = sinks.merge_staging(
        spark,
        path,
        frame(spark, rows),
        dates,
        small_writes_setting=setting,
        batch_rows=len(rows) if small else None,
    )
    written = None
    try:
        if small or change.dates_were_empty:  # when `written` is valid after the write
            written = sorted((tuple(r) for r in change.written.collect()), key=repr)
            assert len(written) == change.inserted + change.updated
    finally:
        change.release()
    # the small path (rows to the driver, no cache) is taken exactly when the batch's
    # row count is given with "auto"
    assert (change.cached is None) == small
    return Written(change.inserted, change.updated, change.dates_were_empty, written)


class StagingTable(str):
    """The staging table's path, who commits the writes (`small_writes`: Spark, or
    delta-rs), and whether the writes tell the batch's row count."""

    setting: str
    rows_known: bool


@pytest.fixture(params=["spark", "auto", "auto+rows"])
def staging(spark: SparkSession, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    lake = sinks.LakePaths(str(tmp_path / "lake"))
    sinks.create_tables(spark, lake, [sinks.STAGING])
    path = StagingTable(lake(sinks.STAGING))
    # "auto": these small writes are committed by delta-rs, which also reads the
    # dates' rows; "+rows": the batch's row count is known, so the classed rows
    # come to the driver in one job (merge_staging's small path)
    path.setting, _, rows = request.param.partition("+")
    path.rows_known = rows == "rows"
    return path


def test_staging_write_classes_rows_as_new_changed_or_equal(spark: SparkSession, staging: str) -> None:
    first = write(spark, staging, [reading("a", DAY1, 0, 0.5), reading("a", DAY1, 1, 0.25)])
    assert (first.inserted, first.updated, first.dates_were_empty) == (2, 0, True)
    version = spark.sql(f"DESCRIBE HISTORY delta.`{staging}`").count()

    # the same rows again: nothing to write, no commit
    again = write(spark, staging, [reading("a", DAY1, 0, 0.5), reading("a", DAY1, 1, 0.25)])
    assert (again.inserted, again.updated, again.dates_were_empty) == (0, 0, False)
    assert spark.sql(f"DESCRIBE HISTORY delta.`{staging}`").count() == version

    # one equal, one corrected value, one new attribution, one new key
    mixed = write(
        spark,
        staging,
        [
            reading("a", DAY1, 0, 0.5),
            reading("a", DAY1, 1, 0.75),
            reading("b", DAY1, 0, 0.125, agreement=None),
            reading("a", DAY1, 2, 1.0),
        ],
    )
    assert (mixed.inserted, mixed.updated) == (2, 1)
    assert staged(spark, staging) == {
        ("a", 0): (0.5, 1),
        ("a", 1): (0.75, 1),
        ("a", 2): (1.0, 1),
        ("b", 0): (0.125, None),
    }

    # an attribution change alone is a change too
    reattributed = write(spark, staging, [reading("b", DAY1, 0, 0.125, agreement=2)])
    assert (reattributed.inserted, reattributed.updated) == (0, 1)
    assert staged(spark, staging)[("b", 0)] == (0.125, 2)
    # the writer the test is for made the commits
    made = commits(spark, staging)
    assert "MERGE" in {op for op, _ in made}  # the corrected value and new attribution
    assert {engine for _, engine in made} == {"delta-rs" if staging.setting == "auto" else "Apache-Spark"}


def test_staging_write_knows_when_its_dates_held_nothing(spark: SparkSession, staging: str) -> None:
    write(spark, staging, [reading("a", DAY1, 0, 0.5)])
    other_day = write(spark, staging, [reading("a", DAY2, 0, 0.5)])
    assert other_day.dates_were_empty  # DAY2 held nothing, whatever DAY1 holds
    both = write(spark, staging, [reading("b", DAY2, 0, 0.5), reading("b", DAY3, 0, 0.5)])
    assert not both.dates_were_empty  # DAY2 holds a row now
    assert (both.inserted, both.updated) == (2, 0)
    # what presentation aggregates when the dates held nothing: the rows written
    assert other_day.rows == [tuple(frame(spark, [reading("a", DAY2, 0, 0.5)]).first())]
    held = sorted(
        (r[0], r[1])
        for r in spark.read.format("delta").load(staging).select("meterpoint_id", "reading_date").collect()
    )
    assert held == [("a", DAY1), ("a", DAY2), ("b", DAY2), ("b", DAY3)]


WRITERS = ("spark", "delta-rs")


def test_staging_of_dates_read_by_delta_rs_equals_sparks_read_and_large_or_unreadable_go_to_spark(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rows a small batch classes against and recomputes presentation from: delta-rs
    reads exactly what Spark reads (types, NULLs, summer instants), and leaves to Spark a
    read over `MAX_READ_ROWS` rows or of a table with a reader feature it is not trusted with."""
    summer = date(2021, 7, 1)
    in_summer = reading("s", summer, 0, 1.5, agreement=None)
    in_summer["interval_start"] -= timedelta(hours=1)  # local midnight is 23:00 UTC in summer
    lake = sinks.LakePaths(str(tmp_path / "lake"))
    sinks.create_tables(spark, lake, [sinks.STAGING])
    path = lake(sinks.STAGING)

    empty, files = sinks.staging_of_dates(spark, path, [DAY1], "auto")
    assert (files, empty.count()) == (0, 0)  # an empty table: no file, no partition column
    rows = [reading("a", DAY1, 0, 0.5), reading("a", DAY1, 1, 0.25), reading("b", DAY2, 0, 2.0), in_summer]
    frame(spark, rows).write.format("delta").mode("append").save(path)

    def collected(df: DataFrame) -> list[tuple]:
        return sorted((tuple(r) for r in df.collect()), key=repr)

    by_spark, none = sinks.staging_of_dates(spark, path, [DAY1, summer], "spark")
    by_rs, files = sinks.staging_of_dates(spark, path, [DAY1, summer], "auto")
    assert none is None and files is not None and files >= 2  # one date, one partition folder
    assert by_rs.schema == by_spark.schema == schemas.STAGING_READINGS
    assert collected(by_rs) == collected(by_spark)
    assert len(collected(by_rs)) == 3  # DAY2 is not read
    assert by_rs.rdd.getNumPartitions() == 1  # driver-side rows: aggregates need no shuffle
    s0 = next(r for r in by_rs.collect() if r["meterpoint_id"] == "s")
    assert s0["interval_start"].timestamp() == datetime(2021, 6, 30, 23, 0, tzinfo=UTC).timestamp()
    assert s0["agreement_id"] is None and s0["product_is_variable"] is None
    assert sinks.staging_of_dates(spark, path, [DAY3], "auto")[1] == 0

    monkeypatch.setattr(small_writes, "MAX_READ_ROWS", 2)
    read = small_writes.read_partitions(path, "reading_date", [DAY1, summer], schemas.STAGING_READINGS)
    assert read is None
    large, none = sinks.staging_of_dates(spark, path, [DAY1, summer], "auto")
    assert none is None and collected(large) == collected(by_spark)
    monkeypatch.setattr(small_writes, "MAX_READ_ROWS", 3)
    assert sinks.staging_of_dates(spark, path, [DAY1, summer], "auto")[1] == files

    spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('delta.enableDeletionVectors' = 'true')")
    assert small_writes.read_partitions(path, "reading_date", [DAY1], schemas.STAGING_READINGS) is None
    assert sinks.staging_of_dates(spark, path, [DAY1], "auto")[1] is None

    # reader version 2: column mapping without a list of reader features
    mapped = str(tmp_path / "mapped")
    spark.sql(
        f"CREATE TABLE delta.`{mapped}` (reading_date DATE, x INT) USING delta PARTITIONED BY (reading_date)"
        " TBLPROPERTIES ('delta.columnMapping.mode' = 'name', 'delta.minReaderVersion' = '2',"
        " 'delta.minWriterVersion' = '5')"
    )
    spark.sql(f"INSERT INTO delta.`{mapped}` VALUES (DATE'2021-01-01', 1)")
    assert RsTable(mapped).protocol().min_reader_version == 2
    schema = StructType([StructField("reading_date", DateType()), StructField("x", IntegerType())])
    assert small_writes.read_partitions(mapped, "reading_date", [DAY1], schema) is None


@pytest.mark.parametrize("writer", WRITERS)
def test_replacing_dates_leaves_other_dates_alone(spark: SparkSession, tmp_path: Path, writer: str) -> None:
    lake = sinks.LakePaths(str(tmp_path / "lake"))
    table = sinks.PRODUCT_DAY
    sinks.create_tables(spark, lake, [table])

    def rows(*values: tuple[str | None, date, int, float]) -> DataFrame:
        return spark.createDataFrame(list(values), schemas.PRODUCT_DAY_TOTALS)

    def replace(df: DataFrame, dates: list[date], append: bool = False) -> None:
        sinks.replace_dates(spark, lake(table), table, df, dates, append, writer)

    first = rows(("Fixed", DAY1, 2, 1.5), (None, DAY1, 1, 0.5))
    replace(first, [DAY1])
    replace(rows(("Fixed", DAY2, 3, 2.5)), [DAY2], append=True)
    # DAY1 recomputed: the no-agreement group is gone, Fixed changed; DAY2 untouched
    replace(rows(("Fixed", DAY1, 3, 2.0)), [DAY1])
    expected = [("Fixed", DAY1, 3, 2.0), ("Fixed", DAY2, 3, 2.5)]
    result = sorted(tuple(r) for r in spark.read.format("delta").load(lake(table)).collect())
    assert result == expected
    # a replayed batch writes the same rows again: nothing changes
    replace(rows(("Fixed", DAY1, 3, 2.0)), [DAY1])
    again = sorted(tuple(r) for r in spark.read.format("delta").load(lake(table)).collect())
    assert again == expected


@pytest.mark.parametrize("writer", WRITERS)
def test_replacing_half_hour_dates_by_local_date_deletes_what_is_no_longer_produced(
    spark: SparkSession, tmp_path: Path, writer: str
) -> None:
    lake = sinks.LakePaths(str(tmp_path / "lake"))
    table = sinks.HALF_HOUR
    sinks.create_tables(spark, lake, [table])

    def slot(day: date, hour: int) -> tuple[datetime, datetime, int, float]:
        # in summer the local day starts at 23:00 UTC the day before: the date is the local one
        local = datetime(day.year, day.month, day.day, hour)
        return (local.replace(tzinfo=UTC) - timedelta(hours=1), local, 1, 0.5)

    summer1, summer2 = date(2021, 7, 1), date(2021, 7, 2)
    sinks.replace_dates(
        spark,
        lake(table),
        table,
        spark.createDataFrame([slot(summer1, 0), slot(summer2, 0)], schemas.HALF_HOUR_TOTALS),
        [summer1, summer2],
        append=True,
        writer=writer,
    )
    # summer1 recomputed to nothing (say, its readings moved away): its rows go, summer2 stays
    sinks.replace_dates(
        spark,
        lake(table),
        table,
        spark.createDataFrame([], schemas.HALF_HOUR_TOTALS),
        [summer1],
        writer=writer,
    )
    left = [r["interval_start_local"] for r in spark.read.format("delta").load(lake(table)).collect()]
    assert left == [datetime(2021, 7, 2, 0)]


def test_staging_writes_give_the_same_rows_whichever_writer_commits_each(
    spark: SparkSession, tmp_path: Path
) -> None:
    """Spark's writer and delta-rs take turns on one staging table (a lake sees small
    and large batches): every row, summer instants included, is as either alone leaves it."""
    summer = date(2021, 7, 1)

    def in_summer(mp: str, slot: int, kwh: float) -> dict[str, Any]:
        row = reading(mp, summer, slot, kwh)
        row["interval_start"] -= timedelta(hours=1)  # local midnight is 23:00 UTC in summer
        return row

    deliveries = [
        [reading("a", DAY1, 0, 0.5), reading("a", DAY1, 1, 0.25), in_summer("s", 0, 1.5)],
        [reading("a", DAY1, 0, 0.75), reading("b", DAY1, 0, 0.5, agreement=None), in_summer("s", 0, 2.5)],
        [reading("b", DAY1, 0, 0.5, agreement=2), in_summer("s", 1, 3.5)],
        [reading("a", DAY1, 1, 0.125), reading("c", DAY2, 0, 1.0)],
    ]
    # "+rows": the batch's row count is given (merge_staging's small path)
    turns = {"mixed": ["spark", "auto+rows", "spark", "auto"], "spark": ["spark"] * 4}
    results = {}
    for name, settings in turns.items():
        lake = sinks.LakePaths(str(tmp_path / name))
        sinks.create_tables(spark, lake, [sinks.STAGING])
        for turn, rows in zip(settings, deliveries, strict=True):
            dates = sorted({r["reading_date"] for r in rows})
            setting, _, known = turn.partition("+")
            change = sinks.merge_staging(
                spark,
                lake(sinks.STAGING),
                frame(spark, rows),
                dates,
                small_writes_setting=setting,
                batch_rows=len(rows) if known else None,
            )
            change.release()
        table = spark.read.format("delta").load(lake(sinks.STAGING))
        results[name] = sorted((tuple(r) for r in table.collect()), key=repr)
        if name == "mixed":
            engines = [engine for _, engine in commits(spark, lake(sinks.STAGING))]
            assert engines == ["Apache-Spark", "delta-rs", "Apache-Spark", "delta-rs"]
    assert results["mixed"] == results["spark"]
    fields = schemas.STAGING_READINGS.fieldNames()
    held = {(r[0], r[fields.index("interval_start_local")]): r for r in results["mixed"]}
    assert len(held) == 6
    s0 = held[("s", datetime(2021, 7, 1, 0, 0))]
    # (pyspark hands TIMESTAMP over as the process's local wall clock: compare instants)
    assert (
        s0[fields.index("interval_start")].timestamp() == datetime(2021, 6, 30, 23, 0, tzinfo=UTC).timestamp()
    )
    assert s0[fields.index("consumption_kwh")] == 2.5
    assert held[("b", datetime(2021, 1, 1, 0, 0))][fields.index("agreement_id")] == 2
    assert held[("a", datetime(2021, 1, 1, 0, 30))][fields.index("consumption_kwh")] == 0.125
