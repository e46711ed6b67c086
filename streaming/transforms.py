"""Pure DataFrame transforms: parsed records -> readings -> attributed -> aggregates.

Every function here takes and returns DataFrames and touches no table, so the
tests exercise them on small inline data without a stream.
"""

from __future__ import annotations

from datetime import date

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from streaming.source import micros_to_local, micros_to_timestamp

ATTRIBUTION_COLUMNS = (
    "agreement_id",
    "product_id",
    "product_display_name",
    "product_is_variable",
    "region",
    "account_id",
)
STAGING_COLUMNS = (
    "meterpoint_id",
    "interval_start",
    "interval_start_local",
    "reading_date",
    "consumption_kwh",
    *ATTRIBUTION_COLUMNS,
    "source_file",
    "ingested_at",
)


def file_records(parsed_df: DataFrame) -> DataFrame:
    """One record per file: `source_file`, `columns`, `file_error`."""
    return parsed_df.filter(F.col("kind") == "file")


def row_records(parsed_df: DataFrame) -> DataFrame:
    """One record per data row of a structurally valid file, good or bad."""
    return parsed_df.filter(F.col("kind") == "row")


def with_reading_times(df: DataFrame) -> DataFrame:
    """Adds `interval_start` (instant), `interval_start_local` and local `reading_date`."""
    return (
        df.withColumn("interval_start", micros_to_timestamp(F.col("interval_start_us")))
        .withColumn("interval_start_local", micros_to_local(F.col("interval_start_local_us")))
        .withColumn("reading_date", F.to_date(F.col("interval_start_local")))
    )


def valid_readings(parsed_df: DataFrame) -> DataFrame:
    """The rows that passed every reading rule, with typed reading times."""
    good = row_records(parsed_df).filter(F.col("reason").isNull())
    return with_reading_times(good).select(
        "meterpoint_id",
        "interval_start",
        "interval_start_local",
        "reading_date",
        "consumption_kwh",
        "source_file",
        "file_modification_time",
        "row_index",
    )


def latest_wins(readings_df: DataFrame) -> DataFrame:
    """One reading per (meterpoint_id, interval_start) within one micro-batch.

    Contract: the file with the later modification time, then the greater name,
    then the later row in the file wins.

    With a `reading_date` column (the local date: a function of the instant) the
    date leads the window's keys, so each task's rows come out grouped by date
    and staging's writer needs no sort of its own to write a file per date.
    """
    by_date = ["reading_date"] if "reading_date" in readings_df.columns else []
    order = Window.partitionBy(*by_date, "meterpoint_id", "interval_start").orderBy(
        F.col("file_modification_time").desc(),
        F.col("source_file").desc(),
        F.col("row_index").desc(),
    )
    return (
        readings_df.withColumn("_rank", F.row_number().over(order)).filter(F.col("_rank") == 1).drop("_rank")
    )


def with_attribution(readings_df: DataFrame, segments_df: DataFrame, meterpoints_df: DataFrame) -> DataFrame:
    """Point-in-time join: the agreement covering the reading's local date, and its region.

    `segments_df` holds per meterpoint non-overlapping date ranges, each with the
    one agreement that wins there (see `dimensions.agreement_segments`), so the
    range join matches at most one row. Readings no agreement covers keep NULL
    product fields. Existing attribution columns are replaced.
    """
    base = readings_df.drop(*[c for c in ATTRIBUTION_COLUMNS if c in readings_df.columns])
    seg = segments_df.alias("seg")
    covered = (
        (F.col("r.meterpoint_id") == F.col("seg.meterpoint_id"))
        & (F.col("r.reading_date") >= F.col("seg.segment_from"))
        & (F.col("seg.segment_to").isNull() | (F.col("r.reading_date") < F.col("seg.segment_to")))
    )
    joined = base.alias("r").join(F.broadcast(seg), covered, "left")
    joined = joined.join(
        F.broadcast(meterpoints_df.alias("mp")),
        F.col("r.meterpoint_id") == F.col("mp.meterpoint_id"),
        "left",
    )
    return joined.select(
        "r.*",
        *[F.col(f"seg.{c}") for c in ATTRIBUTION_COLUMNS if c != "region"],
        F.col("mp.region"),
    ).select(*base.columns, *ATTRIBUTION_COLUMNS)


def to_staging(attributed_df: DataFrame, ingested_at: Column) -> DataFrame:
    """The `staging/readings` columns, in order."""
    return attributed_df.withColumn("ingested_at", ingested_at).select(*STAGING_COLUMNS)


def exact_sum(column: str) -> Column:
    """Sum of kWh that does not depend on row order: decimal addition is exact, so a
    recomputation over the same rows gives the same double, bit for bit."""
    return F.sum(F.col(column).cast("decimal(38,12)")).cast("double")


def meterpoints_at_instant() -> Column:
    """The distinct meterpoints of a group of staging rows of ONE instant (or of
    one instant and product): staging holds one row per (meterpoint_id,
    interval_start) (its key, with the local date that instant gives) and
    meterpoint_id is never NULL, so their rows are the distinct meterpoints.
    A count, where `count_distinct` plans a second aggregation (and a second
    shuffle): the four presentation aggregates of the 720,000-reading backfill
    took 1.7-1.9 s and 2.5-3.0 JVM CPU s on a warm session against 3.8-4.1 s
    and 6.5-7.0 s."""
    return F.count(F.lit(1)).cast("long")


def half_hour_totals(staging_df: DataFrame) -> DataFrame:
    """`presentation/total_consumption_half_hour`: one row per half-hour instant."""
    return staging_df.groupBy("interval_start", "interval_start_local").agg(
        meterpoints_at_instant().alias("meterpoint_count"),
        exact_sum("consumption_kwh").alias("total_kwh"),
    )


def product_day_totals(staging_df: DataFrame) -> DataFrame:
    """`presentation/consumption_per_product_per_day`, grouped by display name
    (a meterpoint has a row per half hour of the day: its distinct count)."""
    return staging_df.groupBy("product_display_name", F.col("reading_date").alias("date")).agg(
        F.count_distinct("meterpoint_id").cast("long").alias("meterpoint_count"),
        exact_sum("consumption_kwh").alias("total_kwh"),
    )


def with_avg_kwh(totals_df: DataFrame) -> DataFrame:
    """Adds `avg_kwh = total_kwh / meterpoint_count`."""
    return totals_df.withColumn("avg_kwh", F.col("total_kwh") / F.col("meterpoint_count"))


def gold_aggregate_per_half_hour(staging_df: DataFrame) -> DataFrame:
    return with_avg_kwh(half_hour_totals(staging_df))


def gold_avg_half_hour_by_product(staging_df: DataFrame) -> DataFrame:
    totals = staging_df.groupBy("product_display_name", "interval_start", "interval_start_local").agg(
        meterpoints_at_instant().alias("meterpoint_count"),
        exact_sum("consumption_kwh").alias("total_kwh"),
    )
    return with_avg_kwh(totals)


def active_agreements(agreements_df: DataFrame, as_of: date) -> DataFrame:
    """Agreements active on `as_of`: valid_from < as_of < valid_to (NULL: open-ended)."""
    day = F.lit(as_of)
    active = (F.col("valid_from") < day) & (F.col("valid_to").isNull() | (F.col("valid_to") > day))
    return agreements_df.filter(active).select(
        F.col("agreement_id").cast("long"),
        "meterpoint_id",
        "product_display_name",
        "product_is_variable",
    )
