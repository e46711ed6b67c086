"""Delta sinks: table creation, idempotent appends, and the MERGEs.

Every write here is safe to repeat: appends carry Delta's `txnAppId` /
`txnVersion` (a replayed micro-batch is skipped by Delta itself), MERGEs only
change rows whose values differ, and presentation rows are recomputed from
staging, so a batch replayed after a crash leaves every table as it was.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import date
from functools import reduce

from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from streaming import schemas

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

# key columns and the target's local-date expression of each presentation table
PRESENTATION_KEYS: dict[str, tuple[tuple[str, ...], str]] = {
    HALF_HOUR: (("interval_start",), "to_date(t.interval_start_local)"),
    PRODUCT_DAY: (("product_display_name", "date"), "t.date"),
    GOLD_HALF_HOUR: (("interval_start",), "to_date(t.interval_start_local)"),
    GOLD_PRODUCT_HALF_HOUR: (
        ("product_display_name", "interval_start"),
        "to_date(t.interval_start_local)",
    ),
}

_BAD_NAME_CHARS = re.compile(r"[ ,;{}()\n\t=]")


def ensure_tables(spark: SparkSession, location: LakePaths) -> None:
    """Create every output table (empty, with its schema) if it does not exist yet."""
    from concurrent.futures import ThreadPoolExecutor

    def create(name: str) -> None:
        if _has_delta_log(location(name)) or DeltaTable.isDeltaTable(spark, location(name)):
            return
        schema, partitions = TABLES[name]
        builder = DeltaTable.createIfNotExists(spark).location(location(name)).addColumns(schema)
        if partitions:
            builder = builder.partitionedBy(*partitions)
        builder.execute()

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(create, TABLES))


def _has_delta_log(path: str) -> bool:
    """A local table's log holds a commit (a directory listing, where loading a
    Delta snapshot takes a Spark job)."""
    import os

    if "://" in path and not path.startswith("file:"):
        return False
    log = os.path.join(path.removeprefix("file:"), "_delta_log")
    return os.path.isdir(log) and any(name.endswith(".json") for name in os.listdir(log))


class LakePaths:
    """Maps a table name such as `staging/readings` to its location under the lake root."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")

    def __call__(self, name: str) -> str:
        return f"{self.root}/{name}"


def raw_column_name(name: str) -> str:
    """A file's column name as a Delta column: reserved characters become `_`,
    names clashing with the raw layer's own columns get a `file_` prefix."""
    clean = _BAD_NAME_CHARS.sub("_", name) or "_"
    if clean in schemas.RAW_READINGS_META.fieldNames():
        clean = f"file_{clean}"
    return clean


def append_idempotent(
    df: DataFrame, path: str, app_id: str, batch_id: int, merge_schema: bool = False
) -> None:
    """Append once per (app_id, batch_id): Delta skips a version it has already seen."""
    writer = df.write.format("delta").mode("append").option("txnAppId", app_id).option("txnVersion", batch_id)
    if merge_schema:
        writer = writer.option("mergeSchema", "true")
    writer.save(path)


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


def merge_staging(
    spark: SparkSession, path: str, batch_df: DataFrame, dates: Sequence[date]
) -> dict[str, int]:
    """Upsert one reading per key; the later batch wins, an equal value changes nothing.

    Rows equal to what staging holds are removed first, so a repeated delivery
    (or a replayed batch) rewrites no file and commits nothing. Returns the
    MERGE's row counts (`inserted`, `updated`).
    """
    current = spark.read.format("delta").load(path).filter(F.col("reading_date").isin(list(dates)))
    same = null_safe_equal("s", "t", (*STAGING_KEYS, *STAGING_COMPARED))
    changed = batch_df.alias("s").join(current.alias("t"), same, "left_anti").persist()
    try:
        if changed.isEmpty():
            return {"inserted": 0, "updated": 0}
        target = DeltaTable.forPath(spark, path)
        on = F.col("t.reading_date").isin(list(dates)) & reduce(
            lambda acc, c: acc & (F.col(f"t.{c}") == F.col(f"s.{c}")), STAGING_KEYS, F.lit(True)
        )
        metrics = (
            target.alias("t")
            .merge(changed.alias("s"), on)
            .whenMatchedUpdateAll()
            .whenNotMatchedInsertAll()
            .execute()
            .first()  # Delta returns the MERGE's row counts as a one-row DataFrame
        )
    finally:
        changed.unpersist()
    return {
        "inserted": int(metrics["num_inserted_rows"]) if metrics else 0,
        "updated": int(metrics["num_updated_rows"]) if metrics else 0,
    }


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


def merge_recomputed(
    spark: SparkSession, path: str, table: str, fresh_df: DataFrame, dates: Sequence[date]
) -> None:
    """Make the rows of `table` for `dates` equal to `fresh_df` (recomputed from staging).

    Keys are compared null-safe (a NULL display name means "no agreement"), rows
    no longer produced for those dates are deleted, untouched dates are not read.
    """
    keys, target_date = PRESENTATION_KEYS[table]
    in_dates = F.expr(target_date).isin(list(dates))
    values = [c for c in fresh_df.columns if c not in keys]
    target = DeltaTable.forPath(spark, path)
    (
        target.alias("t")
        .merge(fresh_df.alias("s"), null_safe_equal("t", "s", keys) & in_dates)
        .whenMatchedUpdateAll(condition=any_differs("t", "s", values))
        .whenNotMatchedInsertAll()
        .whenNotMatchedBySourceDelete(condition=in_dates)
        .execute()
    )


def overwrite(df: DataFrame, path: str, user_metadata: str) -> None:
    """Replace a small table in one commit, annotated with `user_metadata`."""
    df.write.format("delta").mode("overwrite").option("userMetadata", user_metadata).save(path)
