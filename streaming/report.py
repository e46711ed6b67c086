"""A short summary of what each lake table holds (rows, Delta version)."""

from __future__ import annotations

from delta.tables import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from streaming import dimensions, sinks


def table_names() -> list[str]:
    return [*sinks.TABLES, *(f"raw/{t}" for t in dimensions.TABLES)]


def summary_lines(spark: SparkSession, lake: sinks.LakePaths) -> list[str]:
    """One line per table: name, rows, latest version; then quarantine reasons."""
    lines = [f"{'table':48} {'rows':>10} {'version':>8}"]
    for name in sorted(table_names()):
        location = lake(name)
        if not DeltaTable.isDeltaTable(spark, location):
            lines.append(f"{name:48} {'-':>10} {'-':>8}")
            continue
        version = DeltaTable.forPath(spark, location).history(1).first()
        rows = spark.read.format("delta").load(location).count()
        lines.append(f"{name:48} {rows:>10} {version['version'] if version else '-':>8}")
    lines.extend(quarantine_lines(spark, lake))
    return lines


def quarantine_lines(spark: SparkSession, lake: sinks.LakePaths) -> list[str]:
    """Quarantined rows and files counted by reason code (the text before the colon)."""
    lines = []
    for name in (sinks.QUARANTINE_FILES, sinks.QUARANTINE_READINGS):
        location = lake(name)
        if not DeltaTable.isDeltaTable(spark, location):
            continue
        counts = (
            spark.read.format("delta")
            .load(location)
            .groupBy(F.split("reason", ":")[0].alias("reason"))
            .count()
            .orderBy(F.desc("count"))
            .collect()
        )
        for row in counts:
            lines.append(f"  {name}: {row['count']} x {row['reason']}")
    return lines
