"""Delta sinks: table creation, idempotent appends, and the MERGEs.

Every write here is safe to repeat: appends carry Delta's `txnAppId` /
`txnVersion` (a replayed micro-batch is skipped by Delta itself), MERGEs only
change rows whose values differ, and presentation rows are recomputed from
staging, so a batch replayed after a crash leaves every table as it was.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from functools import reduce

import pyarrow as pa
from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DateType, StructType

from streaming import parquet_writes, schemas, small_writes
from streaming.config import SMALL_WRITES
from streaming.parsing import REQUIRED_COLUMNS

log = logging.getLogger(__name__)

STAGING = "staging/readings"
RAW_READINGS = "raw/readings"
QUARANTINE_READINGS = "quarantine/readings"
QUARANTINE_FILES = "quarantine/files"
ACTIVE_AGREEMENTS = "presentation/active_agreements"
HALF_HOUR = "presentation/total_consumption_half_hour"
PRODUCT_DAY = "presentation/consumption_per_product_per_day"
GOLD_HALF_HOUR = "presentation/gold_aggregate_per_half_hour"
GOLD_PRODUCT_HALF_HOUR = "presentation/gold_avg_half_hour_by_product"

# name -> (schema, partition columns)
TABLES: dict[str, tuple[StructType, tuple[str, ...]]] = {
    RAW_READINGS: (
        StructType(
            [
                schemas.StructField(c, schemas.StringType(), True)
                for c in ("interval_start", "consumption_delta", "meterpoint_id")
            ]
            + schemas.RAW_READINGS_META.fields
        ),
        (),
    ),
    STAGING: (schemas.STAGING_READINGS, ("reading_date",)),
    QUARANTINE_READINGS: (schemas.QUARANTINE_READINGS, ()),
    QUARANTINE_FILES: (schemas.QUARANTINE_FILES, ()),
    ACTIVE_AGREEMENTS: (schemas.ACTIVE_AGREEMENTS, ()),
    HALF_HOUR: (schemas.HALF_HOUR_TOTALS, ()),
    PRODUCT_DAY: (schemas.PRODUCT_DAY_TOTALS, ()),
    GOLD_HALF_HOUR: (schemas.GOLD_HALF_HOUR, ()),
    GOLD_PRODUCT_HALF_HOUR: (schemas.GOLD_PRODUCT_HALF_HOUR, ()),
}

# each presentation table's column holding its local date (DATE) or local time (TIMESTAMP_NTZ)
PRESENTATION_DATE_COLUMN: dict[str, str] = {
    HALF_HOUR: "interval_start_local",
    PRODUCT_DAY: "date",
    GOLD_HALF_HOUR: "interval_start_local",
    GOLD_PRODUCT_HALF_HOUR: "interval_start_local",
}

_BAD_NAME_CHARS = re.compile(r"[ ,;{}()\n\t=]")


def missing_tables(spark: SparkSession, location: LakePaths) -> list[str]:
    """The output tables that do not exist yet."""
    return [name for name in TABLES if not table_exists(spark, location(name))]


def create_tables(
    spark: SparkSession, location: LakePaths, names: Sequence[str], writer: str = "spark"
) -> None:
    """Create the named tables (empty, with their schema and partitioning), side by side.

    `writer="delta-rs"` (a local lake): delta-rs makes the same tables, about 10 ms
    a table, where a cold JVM's Spark took 10-15 s of CPU for the lot.
    """
    from concurrent.futures import ThreadPoolExecutor

    if writer == "delta-rs":
        for name in names:
            schema, partitions = TABLES[name]
            small_writes.create_table(location(name), schema, partitions)
        return

    def create(name: str) -> None:
        schema, partitions = TABLES[name]
        builder = DeltaTable.createIfNotExists(spark).location(location(name)).addColumns(schema)
        if partitions:
            builder = builder.partitionedBy(*partitions)
        builder.execute()

    if names:
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(create, names))


def table_columns(spark: SparkSession, path: str) -> list[str]:
    """The column names of the Delta table at `path` (delta-rs reads a local
    table's schema from its log; Spark loads other tables' snapshots)."""
    if small_writes.is_local(path):
        return small_writes.table_columns(path)
    return spark.read.format("delta").load(path).columns


def table_exists(spark: SparkSession, path: str) -> bool:
    """Whether a Delta table is at `path`. A local one is told by its log folder (a
    directory listing, where asking Spark loads a snapshot: seconds on a cold JVM);
    Spark answers for other paths, and for a local log without a commit file."""
    local = small_writes.local_path(path)
    if local is not None:
        log = os.path.join(local, "_delta_log")
        if not os.path.isdir(log):
            return False
        if any(name.endswith(".json") for name in os.listdir(log)):
            return True
    return bool(DeltaTable.isDeltaTable(spark, path))


class LakePaths:
    """Maps a table name such as `staging/readings` to its location under the lake root."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")

    def __call__(self, name: str) -> str:
        return f"{self.root}/{name}"


_RAW_META_NAMES = {name.lower() for name in schemas.RAW_READINGS_META.fieldNames()}


def raw_column_name(name: str) -> str:
    """A file's column name as a Delta column: reserved characters become `_`,
    names clashing (in any letter case) with the raw layer's own columns get a
    `file_` prefix. Two names may get one column name this way: see
    `raw_column_names` for a batch's columns."""
    clean = _BAD_NAME_CHARS.sub("_", name) or "_"
    if clean.lower() in _RAW_META_NAMES:
        clean = f"file_{clean}"
    return clean


def raw_column_names(
    names: Iterable[str], existing: Callable[[], Sequence[str]] = lambda: ()
) -> dict[str, str]:
    """The Delta column of each of a batch's file column names, no two alike.

    Delta (and Spark, and delta-rs) match column names in any letter case, so
    `Quality` and `quality`, `Interval_Start` beside `interval_start`, or `a b`
    and `a_b` (after `raw_column_name`) would be one column twice and fail the
    raw append. In each such group one name keeps its column name: one spelled
    exactly as a column the table already has (`existing`, called only when a
    batch has such a group), then a required column, then a name that needed no
    change, then the first in code-point order. Each other one gets `__` and
    hex digits of its name's SHA-1 (8, more if those are taken): the same name
    gets the same column whenever it meets the same rivals, and nothing
    delivered is dropped.
    """
    base = {name: raw_column_name(name) for name in names}
    groups: dict[str, list[str]] = {}
    for name, column in base.items():
        groups.setdefault(column.lower(), []).append(name)
    clashes = [members for members in groups.values() if len(members) > 1]
    out = {members[0]: base[members[0]] for members in groups.values() if len(members) == 1}
    if not clashes:
        return out
    held = set(existing())
    # columns this batch gives out (a column the table already has may be given
    # again: it is the same name's column from an earlier batch)
    taken = {column.lower() for column in out.values()}
    for members in clashes:
        keeper = min(members, key=lambda n: (base[n] not in held, n not in REQUIRED_COLUMNS, base[n] != n, n))
        out[keeper] = base[keeper]
        taken.add(base[keeper].lower())
    for members in clashes:
        for name in sorted(members):
            if name in out:
                continue
            digest = hashlib.sha1(name.encode()).hexdigest()
            free = [
                f"{base[name]}__{digest[:n]}"
                for n in (8, 16, 40)
                if f"{base[name]}__{digest[:n]}".lower() not in taken
            ]
            if not free:  # names spelled as this one's SHA-1-suffixed columns, thrice
                raise RuntimeError(f"no free raw column name for file column {name!r}")
            out[name] = free[0]
            taken.add(free[0].lower())
    return out


def append_idempotent(
    df: DataFrame, path: str, app_id: str, batch_id: int, merge_schema: bool = False, writer: str = "spark"
) -> None:
    """Append once per (app_id, batch_id): Delta skips a version it has already seen.

    `writer="delta-rs"` makes the same commit without a Spark job (`small_writes`).
    """
    if writer == "delta-rs":
        small_writes.append_idempotent(path, df, app_id, batch_id, merge_schema)
        return
    if writer == "parquet":
        parquet_writes.append(df, path, app_id, batch_id, merge_schema)
        return
    spark_writer = (
        df.write.format("delta").mode("append").option("txnAppId", app_id).option("txnVersion", batch_id)
    )
    if merge_schema:
        spark_writer = spark_writer.option("mergeSchema", "true")
    spark_writer.save(path)


def null_safe_equal(left: str, right: str, columns: Iterable[str]) -> Column:
    return reduce(
        lambda acc, c: acc & F.col(f"{left}.{c}").eqNullSafe(F.col(f"{right}.{c}")),
        columns,
        F.lit(True),
    )


def any_differs(left: str, right: str, columns: Iterable[str]) -> Column:
    return ~null_safe_equal(left, right, columns)


STAGING_KEYS = ("reading_date", "meterpoint_id", "interval_start")
# a staging row changes when its value or its attribution does
STAGING_COMPARED = ("consumption_kwh", *schemas.ATTRIBUTION.fieldNames())


@dataclass
class StagingChange:
    """What a staging write did: rows inserted and updated, and whether staging held
    no row at all for the batch's dates before (then `written` is every row of them)."""

    inserted: int
    updated: int
    dates_were_empty: bool
    rows: Callable[[], DataFrame]  # makes `written` (built only when asked for)
    cached: DataFrame | None = None  # what `written` reads from Spark's cache, until `release()`

    @property
    def written(self) -> DataFrame:
        """The rows written, in staging's columns.

        After the write, valid when `dates_were_empty` or on the small path
        (`cached` is None): on Spark's path the classing joins staging, and
        Spark's write to staging re-caches the plans that read it, so the
        classing would then be recomputed against the rows just written. A
        commit by delta-rs (`parquet_writes`, `small_writes`) re-caches nothing.
        """
        return self.rows()

    def release(self) -> None:
        if self.cached is not None:
            self.cached.unpersist()


def driver_rows(spark: SparkSession, rows: pa.Table) -> DataFrame:
    """Staging rows held on the driver as a DataFrame of one partition.

    One partition satisfies any grouping: the presentation aggregates over it
    run as one task each, without a shuffle (0.55 -> 0.33 s for a one-file
    batch's four). The rows are few (`small_writes.MAX_READ_ROWS` at most).
    """
    return spark.createDataFrame(rows, schema=schemas.STAGING_READINGS).coalesce(1)


def staging_of_dates(
    spark: SparkSession, path: str, dates: Sequence[date], setting: str = "spark"
) -> tuple[DataFrame, int | None]:
    """Staging's rows of the local `dates` (a partition filter: no other date is read),
    and the number of data files holding them when delta-rs read them (None when
    Spark reads them).

    With `setting="auto"` and few enough rows (`small_writes.read_partitions`),
    delta-rs reads them (a few ms, where Spark would first rebuild the table's
    snapshot after each delta-rs commit, about 0.5 s) and Spark gets them as a
    DataFrame of driver-side rows; otherwise Spark reads the table.
    """
    if writer_for(setting, path) == "delta-rs":
        read = small_writes.read_partitions(path, "reading_date", dates, schemas.STAGING_READINGS)
        if read is not None:
            rows, files = read
            return driver_rows(spark, rows), files
    return spark.read.format("delta").load(path).filter(F.col("reading_date").isin(list(dates))), None


def merge_staging(
    spark: SparkSession,
    path: str,
    batch_df: DataFrame,
    dates: Sequence[date],
    before_write: Callable[[], None] = lambda: None,
    small_writes_setting: str = "spark",
    batch_rows: int | None = None,
) -> StagingChange:
    """Upsert one reading per key; the later batch wins, an equal value changes nothing.

    Each row of the batch is classed against what staging holds for its key: new
    (insert), different (update) or equal (nothing to do). Equal rows are dropped,
    so a repeated delivery or a replayed batch rewrites no file and commits nothing.
    When nothing is updated the new rows are appended in one commit (no MERGE join);
    otherwise one MERGE writes inserts and updates together. `batch_df` holds one
    row per key (`transforms.latest_wins`). `before_write` runs once the rows are
    classed, before staging is changed. The append relies on one writer per lake
    (the classes are read from the snapshot the append then extends).

    `small_writes_setting="auto"` lets delta-rs read the dates' rows and commit a
    small write (`staging_of_dates`, `writer_for`). When delta-rs read them and
    the batch's `batch_rows` make a small write, the classed rows come to the
    driver as Arrow in one `toArrow` (the held rows' broadcast is a job before
    it): they are counted and committed from there, and `written` is made of
    them (no cache, no count job, no second pass over the rows).
    """
    current, files = staging_of_dates(spark, path, dates, small_writes_setting)
    # the files delta-rs found, or partition pruning on the snapshot's file list
    # (no scan of the data)
    dates_were_empty = files == 0 if files is not None else not current.inputFiles()
    if dates_were_empty:
        changed = batch_df.withColumn("_change", F.lit("insert"))
    else:
        held = current.select(
            *STAGING_KEYS,
            *[F.col(c).alias(f"_held_{c}") for c in STAGING_COMPARED],
            F.lit(True).alias("_held"),
        )
        if files is not None:  # driver-side rows, at most small_writes.MAX_READ_ROWS
            held = F.broadcast(held)
        same = reduce(
            lambda acc, c: acc & F.col(c).eqNullSafe(F.col(f"_held_{c}")), STAGING_COMPARED, F.lit(True)
        )
        kind = F.when(F.col("_held").isNull(), "insert").when(~same, "update")
        changed = (
            batch_df.join(held, list(STAGING_KEYS), "left")
            .select(*batch_df.columns, kind.alias("_change"))
            .filter(F.col("_change").isNotNull())
        )
    if (
        files is not None
        and batch_rows is not None
        and writer_for(small_writes_setting, path, rows=batch_rows) == "delta-rs"
    ):
        rows, inserted, updated = small_writes.classed_rows(
            conform(changed, schemas.STAGING_READINGS, "_change"), schemas.STAGING_READINGS
        )
        before_write()
        small_writes.write_staging(path, rows, STAGING_KEYS, dates, inserted, updated)
        return StagingChange(
            inserted,
            updated,
            dates_were_empty,
            lambda: driver_rows(spark, rows),
        )
    changed = changed.persist()
    try:
        counts = {row[0]: int(row[1]) for row in changed.groupBy("_change").count().collect()}
        inserted, updated = counts.get("insert", 0), counts.get("update", 0)
        change = StagingChange(inserted, updated, dates_were_empty, lambda: changed.drop("_change"), changed)
        rows_df = conform(change.written, schemas.STAGING_READINGS)
        before_write()
        if writer_for(small_writes_setting, path, rows=inserted + updated) == "delta-rs":
            small_writes.write_staging(
                path,
                small_writes.arrow_rows(rows_df, schemas.STAGING_READINGS),
                STAGING_KEYS,
                dates,
                inserted,
                updated,
            )
        elif updated == 0 and inserted > 0:
            if large_writer(small_writes_setting, path, rows_df.columns) == "parquet":
                parquet_writes.append(rows_df, path)
            else:
                rows_df.write.format("delta").mode("append").save(path)
        elif updated > 0:
            on = F.col("t.reading_date").isin(list(dates)) & reduce(
                lambda acc, c: acc & (F.col(f"t.{c}") == F.col(f"s.{c}")), STAGING_KEYS, F.lit(True)
            )
            (
                DeltaTable.forPath(spark, path)
                .alias("t")
                .merge(rows_df.alias("s"), on)
                .whenMatchedUpdateAll()
                .whenNotMatchedInsertAll()
                .execute()
            )
    except BaseException:
        changed.unpersist()
        raise
    return change


def conform(df: DataFrame, schema: StructType, *keep: str) -> DataFrame:
    """`df`'s columns in the table's order and types (then the columns `keep` as they are)."""
    return df.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields], *keep)


def update_attribution(spark: SparkSession, path: str, changed_df: DataFrame, columns: Sequence[str]) -> None:
    """Overwrite the attribution columns of the staging rows in `changed_df`."""
    target = DeltaTable.forPath(spark, path)
    on = (
        (F.col("t.reading_date") == F.col("s.reading_date"))
        & (F.col("t.meterpoint_id") == F.col("s.meterpoint_id"))
        & (F.col("t.interval_start") == F.col("s.interval_start"))
    )
    (
        target.alias("t")
        .merge(changed_df.alias("s"), on)
        .whenMatchedUpdate(
            condition=any_differs("t", "s", columns),
            set={c: F.col(f"s.{c}") for c in columns},
        )
        .execute()
    )


def small_writes_setting(spark: SparkSession, setting: str) -> str:
    """`setting`, or `spark` when Hadoop's default file system is not the local one
    (a plain path then names a table there, where delta-rs cannot write)."""
    jsc = spark.sparkContext._jsc  # type: ignore[attr-defined]
    default_fs = str(jsc.hadoopConfiguration().get("fs.defaultFS") or "file:///")
    if setting == "auto" and not default_fs.startswith("file:"):
        log.info("small writes go through Spark: fs.defaultFS is %s", default_fs)
        return "spark"
    return setting


def writer_for(setting: str, path: str, rows: int | None = None, dates: Sequence[date] | None = None) -> str:
    """`delta-rs` or `spark`: who commits one write to the table at `path`.

    `auto` takes delta-rs for a table on a local file system and a small write
    (at most `small_writes.MAX_ROWS` rows, or `MAX_DATES` presentation dates:
    its rows pass through the driver); Spark otherwise, and always for `spark`.
    """
    if setting not in SMALL_WRITES:
        raise ValueError(f"small_writes must be one of {SMALL_WRITES}, got {setting!r}")
    if setting == "spark" or not small_writes.is_local(path):
        return "spark"
    if rows is not None and rows > small_writes.MAX_ROWS:
        return "spark"
    if dates is not None and len(set(dates)) > small_writes.MAX_DATES:
        return "spark"
    return "delta-rs"


def large_writer(setting: str, path: str, columns: Sequence[str], merge_schema: bool = False) -> str:
    """`parquet` or `spark`: who writes an append too large for the driver
    (`writer_for` gave `spark`).

    `auto` takes `parquet_writes` (pyarrow on the executors, one delta-rs commit)
    for a local table it can append `columns` to (`merge_schema`: or add them);
    Spark's Delta writer otherwise, and always for `spark`. A cold backfill of
    720,000 readings took 27.2-30.3 s against 32.4-34.5 s with Spark's writer.
    """
    if setting == "auto" and parquet_writes.can_append(path, columns, merge_schema):
        return "parquet"
    return "spark"


def replace_dates(
    spark: SparkSession,
    path: str,
    table: str,
    fresh_df: DataFrame,
    dates: Sequence[date],
    append: bool = False,
    writer: str = "spark",
) -> None:
    """Make the rows of `table` for the local `dates` equal to `fresh_df` in one commit.

    A `replaceWhere` overwrite: the files holding rows of those dates are rewritten
    without them and the fresh rows added, atomically; other dates are not touched.
    Writing the same rows again (a replayed batch) leaves the table as it was.
    `append=True` is for a caller that knows the table holds no row of `dates`:
    a plain append, which needs no scan of the table. `writer="delta-rs"` makes
    the same commit without a Spark job (`small_writes`).
    """
    schema = TABLES[table][0]
    if not dates:
        return
    column = PRESENTATION_DATE_COLUMN[table]
    if writer == "delta-rs":
        small_writes.replace_dates(path, conform(fresh_df, schema), schema, column, dates, append)
        return
    if append:
        conform(fresh_df, schema).write.format("delta").mode("append").save(path)
        return
    local_date = column if isinstance(schema[column].dataType, DateType) else f"to_date({column})"
    listed = ", ".join(f"DATE'{d.isoformat()}'" for d in sorted(set(dates)))
    (
        conform(fresh_df, schema)
        .write.format("delta")
        .mode("overwrite")
        .option("replaceWhere", f"{local_date} IN ({listed})")
        .save(path)
    )


def overwrite(
    df: DataFrame, path: str, schema: StructType, user_metadata: str, writer: str = "spark"
) -> None:
    """Replace a small table, in `schema`, in one commit annotated with `user_metadata`.

    `writer="delta-rs"`: the rows come to the driver and delta-rs commits them.
    """
    if writer == "delta-rs":
        small_writes.overwrite(path, small_writes.arrow_rows(df, schema), user_metadata)
        return
    df.write.format("delta").mode("overwrite").option("userMetadata", user_metadata).save(path)
