"""Scheduled upkeep of the lake: compact small files, vacuum old ones.

Run it daily (cron, Airflow, a systemd timer) beside the pipeline:

    python -m streaming.maintenance [--config FILE] [--lake DIR] [--retain-hours 168]

Every micro-batch adds a few small files to each table. OPTIMIZE rewrites them
into larger ones (one commit, readers never see a gap); VACUUM deletes the files
no version younger than the retention still needs. Delta's own log cleanup
(`delta.logRetentionDuration`, 30 days by default) runs at each log checkpoint,
so `_delta_log` stays bounded without help.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from delta.tables import DeltaTable
from pyspark.sql import SparkSession

from streaming import dimensions, sinks
from streaming.config import ConfigError, load_config

log = logging.getLogger(__name__)


def maintain(
    spark: SparkSession,
    lake: sinks.LakePaths,
    retain_hours: float,
    names: list[str] | None = None,
) -> dict[str, dict[str, int]]:
    """OPTIMIZE then VACUUM the lake's tables (all by default); files before/after per table."""
    result = {}
    for name in names or [*sinks.TABLES, *(f"raw/{t}" for t in dimensions.TABLES)]:
        location = lake(name)
        if not DeltaTable.isDeltaTable(spark, location):
            continue
        table = DeltaTable.forPath(spark, location)
        before = _num_files(table)
        started = time.monotonic()
        table.optimize().executeCompaction()
        table.vacuum(retain_hours)
        after = _num_files(DeltaTable.forPath(spark, location))
        result[name] = {"files_before": before, "files_after": after}
        log.info("%s: %d -> %d files in %.1f s", name, before, after, time.monotonic() - started)
    return result


def _num_files(table: DeltaTable) -> int:
    detail = table.detail().first()
    return int(detail["numFiles"]) if detail is not None else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config")
    parser.add_argument("--lake")
    parser.add_argument(
        "--retain-hours",
        type=float,
        default=168.0,
        help="keep files younger versions need for this long (default 7 days)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, lake=args.lake)
    except ConfigError as exc:
        print(f"maintenance: error: {exc}", file=sys.stderr)
        return 1
    from streaming.session import build_session

    spark = build_session(cfg)
    if args.retain_hours < 168:
        # Delta refuses short retentions unless told; a reader older than that may fail
        spark.conf.set("spark.databricks.delta.retentionDurationCheck.enabled", "false")
    maintain(spark, sinks.LakePaths(cfg.lake), args.retain_hours)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
