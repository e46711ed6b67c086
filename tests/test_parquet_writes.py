"""Large appends written by the executors with pyarrow and committed by delta-rs
(`streaming.parquet_writes`): the same rows, statistics Spark's data skipping may
trust, idempotent, all or nothing, and only where every rule of the table is kept."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import commits
from deltalake import DeltaTable as RsTable
from pyspark.errors import PythonException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from streaming import parquet_writes, schemas, sinks, small_writes

DAY = date(2021, 3, 27)


def staging_rows(spark: SparkSession, days: int = 3, meterpoints: int = 40) -> DataFrame:
    """Staging rows over `days` local dates (the spring-forward day among them), with
    microsecond `ingested_at` values, a long `source_file` and NULL attribution."""
    rows = []
    for d in range(days):
        day = DAY + timedelta(days=d)
        for m in range(meterpoints):
            for slot in range(0, 48, 5):
                local = datetime(day.year, day.month, day.day) + timedelta(minutes=30 * slot)
                rows.append(
                    (
                        f"{m:010d}",
                        (local - timedelta(hours=1 if day > DAY else 0)).replace(tzinfo=UTC),
                        local,
                        day,
                        0.25 * m + slot / 100,
                        1000 + m if m % 3 else None,
                        7 if m % 3 else None,
                        f"product {m % 2}" if m % 3 else None,
                        bool(m % 2) if m % 3 else None,
                        "east" if m % 4 else None,
                        55 if m % 3 else None,
                        f"file:/data/readings/a-long-folder-name/{m:010d}-{day}.json",
                        datetime(2021, 4, 1, 8, 0, 0, 123_457 + m, tzinfo=UTC),
                    )
                )
    return spark.createDataFrame(rows, schemas.STAGING_READINGS).repartition(3)


def new_staging(spark: SparkSession, tmp: Path) -> str:
    """An empty staging table of a new lake under `tmp`; its path."""
    lake = sinks.LakePaths(str(tmp / "lake"))
    sinks.create_tables(spark, lake, [sinks.STAGING])
    return lake(sinks.STAGING)


def table_rows(spark: SparkSession, path: str) -> list[tuple]:
    return sorted(tuple(r) for r in spark.read.format("delta").load(path).collect())


def adds(path: str, version: int) -> list[dict]:
    log = Path(path) / "_delta_log" / f"{version:020d}.json"
    return [json.loads(line)["add"] for line in log.read_text().splitlines() if '"add"' in line]


def test_the_executors_write_what_spark_writes_with_statistics_data_skipping_can_trust(
    spark: SparkSession, tmp_path: Path
) -> None:
    written = {}
    for writer in ("spark", "parquet"):
        lake = sinks.LakePaths(str(tmp_path / writer))
        sinks.create_tables(spark, lake, [sinks.STAGING])
        path = lake(sinks.STAGING)
        df = staging_rows(spark)
        if writer == "parquet":
            assert sinks.large_writer("auto", path, df.columns) == "parquet"
            parquet_writes.append(df, path)
        else:
            df.write.format("delta").mode("append").save(path)
        written[writer] = table_rows(spark, path)
    assert len(written["parquet"]) == 3 * 40 * 10
    assert written["parquet"] == written["spark"]
    path = str(tmp_path / "parquet" / "staging" / "readings")
    assert commits(spark, path) == [("WRITE", "delta-rs")]
    files = adds(path, RsTable(path).version())
    assert {f["partitionValues"]["reading_date"] for f in files} == {"2021-03-27", "2021-03-28", "2021-03-29"}
    for f in files:
        assert f["path"].startswith(f"reading_date={f['partitionValues']['reading_date']}/part-")
        stats = json.loads(f["stats"])
        assert stats["numRecords"] > 0
        assert "reading_date" not in stats["nullCount"]  # a partition column has no statistics
        assert stats["nullCount"]["meterpoint_id"] == 0 and stats["nullCount"]["agreement_id"] > 0
        # a microsecond instant is kept to the millisecond, rounded outwards
        assert stats["minValues"]["ingested_at"] == "2021-04-01T08:00:00.123Z"
        assert stats["maxValues"]["ingested_at"] in {"2021-04-01T08:00:00.124Z", "2021-04-01T08:00:00.125Z"}
        # a string longer than 32 characters: its prefix is a lower bound, no upper bound is kept
        assert stats["minValues"]["source_file"] == "file:/data/readings/a-long-folder-name/"[:32]
        assert "source_file" not in stats["maxValues"]
        assert "interval_start_local" not in stats["minValues"]  # TIMESTAMP_NTZ: none kept
        assert "product_is_variable" not in stats["minValues"]  # booleans: none kept
    # every filter gives the same rows with data skipping as without it
    queries = [
        F.col("meterpoint_id") == "0000000007",
        F.col("interval_start") == datetime(2021, 3, 28, 4, 0, tzinfo=UTC),
        F.col("ingested_at") >= datetime(2021, 4, 1, 8, 0, 0, 123_496, tzinfo=UTC),
        F.col("ingested_at") <= datetime(2021, 4, 1, 8, 0, 0, 123_457, tzinfo=UTC),
        F.col("consumption_kwh") > 9.7,
        F.col("source_file") > "file:/data/readings/a-long-folder-name/0000000038",
        F.col("agreement_id").isNull() & F.col("region").isNotNull(),
    ]
    table = spark.read.format("delta").load(path)
    skipped = [table.filter(q).count() for q in queries]
    spark.conf.set("spark.databricks.delta.stats.skipping", "false")
    try:
        assert skipped == [spark.read.format("delta").load(path).filter(q).count() for q in queries]
    finally:
        spark.conf.unset("spark.databricks.delta.stats.skipping")
    assert all(skipped), skipped


def test_an_idempotent_append_is_written_once_whichever_writer_recorded_it(
    spark: SparkSession, tmp_path: Path
) -> None:
    path = new_staging(spark, tmp_path)
    df = staging_rows(spark, days=1, meterpoints=5)
    sinks.append_idempotent(df, path, "app", 3, writer="spark")  # Spark's txnAppId/txnVersion
    version = RsTable(path).version()
    sinks.append_idempotent(df, path, "app", 3, writer="parquet")
    sinks.append_idempotent(df, path, "app", 2, writer="parquet")
    assert RsTable(path).version() == version
    sinks.append_idempotent(df, path, "app", 4, writer="parquet")
    sinks.append_idempotent(df, path, "app", 4, writer="spark")
    sinks.append_idempotent(df, path, "app", 4, writer="parquet")
    assert RsTable(path).version() == version + 1
    assert RsTable(path).transaction_version("app") == 4
    assert len(table_rows(spark, path)) == 2 * 5 * 10


def test_a_null_in_a_not_null_column_fails_the_write_and_leaves_nothing(
    spark: SparkSession, tmp_path: Path
) -> None:
    path = new_staging(spark, tmp_path)
    rows = staging_rows(spark, days=2, meterpoints=10)
    # one bad row among good ones: tasks that wrote files before it fail too
    bad = rows.withColumn(
        "consumption_kwh",
        F.when(F.col("meterpoint_id") == "0000000004", None).otherwise(F.col("consumption_kwh")),
    )
    version = RsTable(path).version()
    spark.conf.set(
        "spark.sql.execution.arrow.maxRecordsPerBatch", "16"
    )  # files are written before the bad row
    try:
        with pytest.raises(PythonException, match="NOT NULL column 'consumption_kwh' holds"):
            parquet_writes.append(bad.coalesce(1), path)
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
    assert RsTable(path).version() == version
    assert not list(Path(path).rglob("*.parquet"))  # the failed task removed its files


def test_new_columns_are_added_and_a_name_that_differs_only_in_case_goes_through_spark(
    spark: SparkSession, tmp_path: Path
) -> None:
    lake = sinks.LakePaths(str(tmp_path / "lake"))
    sinks.create_tables(spark, lake, [sinks.RAW_READINGS])
    path = lake(sinks.RAW_READINGS)
    raw = spark.createDataFrame(
        [
            (
                "2021-01-01 00:00",
                "0.5",
                "A",
                "good",
                "file:/r/a.json",
                None,
                datetime(2021, 1, 2, tzinfo=UTC),
                0,
            )
        ],
        "interval_start string, consumption_delta string, meterpoint_id string, quality string, "
        "source_file string, file_modification_time timestamp, ingested_at timestamp, batch_id long",
    )
    assert not parquet_writes.can_append(path, raw.columns)
    assert sinks.large_writer("auto", path, raw.columns, merge_schema=True) == "parquet"
    assert sinks.large_writer("spark", path, raw.columns, merge_schema=True) == "spark"
    sinks.append_idempotent(raw, path, "app", 0, merge_schema=True, writer="parquet")
    table = spark.read.format("delta").load(path)
    assert table.columns[-1] == "quality" and dict(table.dtypes)["quality"] == "string"
    assert [r.quality for r in table.collect()] == ["good"]
    assert not parquet_writes.can_append(path, ["Quality"], merge_schema=True)
    assert parquet_writes.can_append(path, ["quality", "meterpoint_id"])
    # a batch without the column: null there
    sinks.append_idempotent(raw.drop("quality"), path, "app", 1, writer="parquet")
    assert sorted((r.quality or "") for r in spark.read.format("delta").load(path).collect()) == ["", "good"]


def test_a_table_with_a_rule_this_writer_does_not_keep_is_left_to_spark(
    spark: SparkSession, tmp_path: Path
) -> None:
    lake = sinks.LakePaths(str(tmp_path / "lake"))
    sinks.create_tables(spark, lake, [sinks.STAGING, sinks.HALF_HOUR])
    staging, half_hour = lake(sinks.STAGING), lake(sinks.HALF_HOUR)
    assert parquet_writes.can_append(staging, schemas.STAGING_READINGS.fieldNames())
    assert parquet_writes.can_append(half_hour, ["interval_start"])
    spark.sql(f"ALTER TABLE delta.`{staging}` ADD CONSTRAINT positive CHECK (consumption_kwh >= 0)")
    assert not parquet_writes.can_append(staging, schemas.STAGING_READINGS.fieldNames())
    assert sinks.large_writer("auto", staging, ["meterpoint_id"]) == "spark"
    spark.sql(f"ALTER TABLE delta.`{half_hour}` SET TBLPROPERTIES ('delta.enableDeletionVectors' = 'true')")
    assert not parquet_writes.can_append(half_hour, ["interval_start"])
    by_name = str(tmp_path / "by_name")
    spark.range(1).withColumn("name", F.lit("x")).write.format("delta").partitionBy("name").save(by_name)
    assert not parquet_writes.can_append(by_name, ["id"])  # partitioned by a string
    for columns in ("s VARCHAR(3)", "s STRUCT<a: INT>", "s MAP<STRING, STRING>"):
        other = str(tmp_path / f"other{len(columns)}")
        spark.sql(f"CREATE TABLE delta.`{other}` ({columns}) USING delta")
        assert not parquet_writes.can_append(other, ["s"]), columns
    # new columns must differ from each other too, in any letter case
    raw = lake(sinks.RAW_READINGS)
    sinks.create_tables(spark, lake, [sinks.RAW_READINGS])
    assert parquet_writes.can_append(raw, ["Extra", "other"], merge_schema=True)
    assert not parquet_writes.can_append(raw, ["Extra", "extra"], merge_schema=True)
    assert not parquet_writes.can_append("s3a://bucket/lake/staging/readings", ["meterpoint_id"])


def test_a_failing_task_removes_the_files_it_wrote(tmp_path: Path) -> None:
    schema = pa.schema([pa.field("day", pa.date32(), nullable=False), pa.field("kwh", pa.float64())])

    def batches():
        yield pa.RecordBatch.from_pydict({"day": [DAY, DAY + timedelta(days=1)], "kwh": [1.0, 2.0]}, schema)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        list(parquet_writes.write_files(str(tmp_path), schema, ["day"], ["kwh"], batches()))
    assert not list(tmp_path.rglob("*.parquet"))
    # and a task that ends well hands over each file, NaN leaving the column unbounded
    out = parquet_writes.write_files(
        str(tmp_path),
        schema,
        ["day"],
        ["kwh"],
        iter([pa.RecordBatch.from_pydict({"day": [DAY, DAY], "kwh": [float("nan"), 2.0]}, schema)]),
    )
    (files,) = list(out)
    (row,) = files.to_pylist()
    assert json.loads(row["partition_values"]) == {"day": "2021-03-27"}
    assert json.loads(row["stats"]) == {
        "numRecords": 2,
        "minValues": {},
        "maxValues": {},
        "nullCount": {"kwh": 0},
    }
    assert (tmp_path / row["path"]).stat().st_size == row["size"]


def test_a_task_writes_a_row_group_per_file_and_bounds_its_open_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.parquet as pq

    schema = pa.schema([pa.field("day", pa.int64()), pa.field("kwh", pa.float64())])

    def batch(days: list[int | None]) -> pa.RecordBatch:
        return pa.RecordBatch.from_pydict({"day": days, "kwh": [float(i) for i in range(len(days))]}, schema)

    # rows grouped by partition value, handed over a few at a time: one file per
    # value, its rows in one row group; NULL is the Hive default partition
    grouped = [batch([1] * 3), batch([1, 1, 2]), batch([2] * 4), batch([None, None])]
    (out,) = parquet_writes.write_files(str(tmp_path / "a"), schema, ["day"], ["kwh"], iter(grouped))
    files = out.to_pylist()
    assert [json.loads(f["partition_values"]) for f in files] == [{"day": "1"}, {"day": "2"}, {"day": None}]
    assert files[2]["path"].startswith("day=__HIVE_DEFAULT_PARTITION__/")
    for f, rows in zip(files, (5, 5, 2), strict=True):
        meta = pq.ParquetFile(tmp_path / "a" / f["path"]).metadata
        assert (meta.num_rows, meta.num_row_groups, json.loads(f["stats"])["numRecords"]) == (rows, 1, rows)
    # at most two files open: a value met again after its file was closed gets another
    monkeypatch.setattr(parquet_writes, "MAX_OPEN_FILES", 2)
    mixed = [batch([1, 2]), batch([3]), batch([1, 2, 3])]
    (out,) = parquet_writes.write_files(str(tmp_path / "b"), schema, ["day"], ["kwh"], iter(mixed))
    files = out.to_pylist()
    assert sorted(json.loads(f["partition_values"])["day"] for f in files) == ["1", "1", "2", "2", "3", "3"]
    assert sum(json.loads(f["stats"])["numRecords"] for f in files) == 6
    assert sum(pq.ParquetFile(tmp_path / "b" / f["path"]).metadata.num_rows for f in files) == 6
    # a buffer over ROW_GROUP_ROWS is written as a row group of its own
    monkeypatch.setattr(parquet_writes, "ROW_GROUP_ROWS", 4)
    (out,) = parquet_writes.write_files(str(tmp_path / "c"), schema, [], ["kwh"], iter([batch([1] * 3)] * 3))
    (f,) = out.to_pylist()
    assert pq.ParquetFile(tmp_path / "c" / f["path"]).metadata.num_row_groups == 2  # 6 rows, then 3


def test_timestamp_and_date_statistics_are_bounds_in_every_year() -> None:
    instant = pa.timestamp("us", tz="UTC")
    cases = [
        (datetime(1969, 12, 31, 23, 59, 59, 999_001, tzinfo=UTC), False, "1969-12-31T23:59:59.999Z"),
        (datetime(1969, 12, 31, 23, 59, 59, 999_001, tzinfo=UTC), True, "1970-01-01T00:00:00.000Z"),
        (datetime(999, 1, 1, 0, 0, 0, 1, tzinfo=UTC), False, "0999-01-01T00:00:00.000Z"),
        (datetime(999, 1, 1, 0, 0, 0, 1, tzinfo=UTC), True, "0999-01-01T00:00:00.001Z"),
        (datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC), False, "9999-12-31T23:59:59.999Z"),
        (datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC), True, None),  # no upper bound
    ]
    for moment, up, expected in cases:
        us = pa.scalar(moment, instant).cast(pa.int64()).as_py()
        assert parquet_writes._bound(instant, us, up) == expected, (moment, up)
    assert parquet_writes._bound(pa.date32(), date(999, 3, 1), False) == "0999-03-01"
    assert parquet_writes._bound(pa.timestamp("us"), 0, False) is None  # TIMESTAMP_NTZ
    assert parquet_writes._bound(pa.string(), "é" * 32, True) == "é" * 32


def test_a_column_of_another_type_fails_the_write(tmp_path: Path) -> None:
    schema = pa.schema([pa.field("n", pa.int64()), pa.field("at", pa.timestamp("us", tz="UTC"))])
    given = pa.RecordBatch.from_pydict(
        {"n": ["1"], "at": pa.array([datetime(2021, 1, 1)], pa.timestamp("us", tz="Europe/London"))}
    )
    with pytest.raises(parquet_writes.ParquetWriteError, match="column 'n' is string, the table's is int64"):
        list(parquet_writes.write_files(str(tmp_path), schema, [], [], iter([given])))
    assert not list(tmp_path.rglob("*.parquet"))
    # an instant in another zone's metadata is the same instant
    fine = given.set_column(0, "n", pa.array([1]))
    (out,) = parquet_writes.write_files(str(tmp_path), schema, [], ["at"], iter([fine]))
    assert json.loads(out.to_pylist()[0]["stats"])["minValues"] == {"at": "2021-01-01T00:00:00.000Z"}


def test_new_keys_into_dates_staging_already_holds_are_appended_by_the_executors(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = new_staging(spark, tmp_path)
    days = [DAY, DAY + timedelta(days=1)]
    rows = staging_rows(spark, days=2, meterpoints=10)
    held = rows.filter(F.col("meterpoint_id") < "0000000005")
    sinks.merge_staging(spark, path, held, days, small_writes_setting="auto", batch_rows=100).release()
    # a batch too large for the driver: half its keys held (equal), half new
    monkeypatch.setattr(small_writes, "MAX_ROWS", 0)
    change = sinks.merge_staging(spark, path, rows, days, small_writes_setting="auto", batch_rows=200)
    try:
        assert (change.inserted, change.updated, change.dates_were_empty) == (100, 0, False)
        assert sorted(tuple(r) for r in change.written.collect()) == sorted(
            tuple(r) for r in rows.filter(F.col("meterpoint_id") >= "0000000005").collect()
        )
    finally:
        change.release()
    assert commits(spark, path)[-1] == ("WRITE", "delta-rs")
    assert table_rows(spark, path) == sorted(tuple(r) for r in rows.collect())
    assert {f["path"].split("/")[0] for f in adds(path, RsTable(path).version())} == {
        "reading_date=2021-03-27",
        "reading_date=2021-03-28",
    }
