"""Declared schemas: the file source, the parser's output and the lake tables."""

from __future__ import annotations

from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    BooleanType,
    DateType,
    DoubleType,
    IntegerType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampNTZType,
    TimestampType,
)

# Spark's binaryFile source: one row per file, read whole.
BINARY_FILE = StructType(
    [
        StructField("path", StringType(), False),
        StructField("modificationTime", TimestampType(), False),
        StructField("length", LongType(), False),
        StructField("content", BinaryType(), True),
    ]
)

# What `streaming.parsing` makes of a file: one `file` record per file, then one
# `row` record per data row.
PARSED = StructType(
    [
        StructField("kind", StringType(), False),
        StructField("source_file", StringType(), False),
        StructField("file_modification_time", TimestampType(), True),
        StructField("columns", ArrayType(StringType()), True),
        StructField("file_error", StringType(), True),
        StructField("row_index", IntegerType(), True),
        StructField("raw_values", MapType(StringType(), StringType()), True),
        StructField("row_json", StringType(), True),
        StructField("meterpoint_id", StringType(), True),
        StructField("interval_start_us", LongType(), True),
        StructField("interval_start_local_us", LongType(), True),
        StructField("consumption_kwh", DoubleType(), True),
        StructField("reason", StringType(), True),
    ]
)

# Raw layer: the file's own columns (strings) come first, added as they appear.
RAW_READINGS_META = StructType(
    [
        StructField("source_file", StringType(), False),
        StructField("file_modification_time", TimestampType(), True),
        StructField("ingested_at", TimestampType(), False),
        StructField("batch_id", LongType(), False),
    ]
)

ATTRIBUTION = StructType(
    [
        StructField("agreement_id", LongType(), True),
        StructField("product_id", LongType(), True),
        StructField("product_display_name", StringType(), True),
        StructField("product_is_variable", BooleanType(), True),
        StructField("region", StringType(), True),
        StructField("account_id", LongType(), True),
    ]
)

STAGING_READINGS = StructType(
    [
        StructField("meterpoint_id", StringType(), False),
        StructField("interval_start", TimestampType(), False),
        StructField("interval_start_local", TimestampNTZType(), False),
        StructField("reading_date", DateType(), False),
        StructField("consumption_kwh", DoubleType(), False),
        *ATTRIBUTION.fields,
        StructField("source_file", StringType(), False),
        StructField("ingested_at", TimestampType(), False),
    ]
)

QUARANTINE_READINGS = StructType(
    [
        StructField("interval_start", StringType(), True),
        StructField("consumption_delta", StringType(), True),
        StructField("meterpoint_id", StringType(), True),
        StructField("row", StringType(), True),
        StructField("row_index", IntegerType(), True),
        StructField("source_file", StringType(), False),
        StructField("reason", StringType(), False),
        StructField("ingested_at", TimestampType(), False),
    ]
)

QUARANTINE_FILES = StructType(
    [
        StructField("source_file", StringType(), False),
        StructField("reason", StringType(), False),
        StructField("ingested_at", TimestampType(), False),
    ]
)

ACTIVE_AGREEMENTS = StructType(
    [
        StructField("agreement_id", LongType(), True),
        StructField("meterpoint_id", StringType(), True),
        StructField("product_display_name", StringType(), True),
        StructField("product_is_variable", BooleanType(), True),
    ]
)

HALF_HOUR_TOTALS = StructType(
    [
        StructField("interval_start", TimestampType(), False),
        StructField("interval_start_local", TimestampNTZType(), False),
        StructField("meterpoint_count", LongType(), False),
        StructField("total_kwh", DoubleType(), False),
    ]
)

PRODUCT_DAY_TOTALS = StructType(
    [
        StructField("product_display_name", StringType(), True),
        StructField("date", DateType(), False),
        StructField("meterpoint_count", LongType(), False),
        StructField("total_kwh", DoubleType(), False),
    ]
)

GOLD_HALF_HOUR = StructType([*HALF_HOUR_TOTALS.fields, StructField("avg_kwh", DoubleType(), False)])

GOLD_PRODUCT_HALF_HOUR = StructType(
    [
        StructField("product_display_name", StringType(), True),
        *HALF_HOUR_TOTALS.fields,
        StructField("avg_kwh", DoubleType(), False),
    ]
)

# Conformed dimensions, as the join uses them.
AGREEMENT_SEGMENTS = StructType(
    [
        StructField("meterpoint_id", StringType(), False),
        StructField("segment_from", DateType(), False),
        StructField("segment_to", DateType(), True),  # NULL: open-ended
        *[f for f in ATTRIBUTION.fields if f.name != "region"],
    ]
)

METERPOINTS = StructType(
    [
        StructField("meterpoint_id", StringType(), False),
        StructField("region", StringType(), True),
    ]
)
