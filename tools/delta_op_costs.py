"""What one small Delta operation costs on a warm session: wall time, JVM CPU, Spark jobs.

    .venv/bin/python tools/delta_op_costs.py [--spark '{"spark.key": "value"}']

A 48,000-row table (partitioned by date, and a copy unpartitioned) gets 48-row
writes the way the pipeline writes a one-file batch: an append, a replaceWhere
of one date (on a data column and on the partition column), a MERGE, and a
filtered read. Each operation runs three times; the third is reported, with
the number of Spark jobs it ran and their stage counts.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from delta.tables import DeltaTable
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from streaming.bench import process_cpu_seconds
from streaming.config import load_config
from streaming.session import build_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spark", default="{}", help="JSON object of Spark settings to override")
    args = parser.parse_args()
    spark = build_session(load_config(spark=json.loads(args.spark)))
    sc = spark.sparkContext
    jvm = int(sc._jvm.ProcessHandle.current().pid())  # type: ignore[union-attr]
    root = tempfile.mkdtemp(prefix="delta-op-costs-")

    def jvm_cpu() -> float:
        return process_cpu_seconds(jvm)

    def rows(n: int, day: int) -> DataFrame:
        return spark.range(n).select(
            F.lit(f"2021-01-{day:02d}").cast("date").alias("d"),
            (F.col("id") % 48).alias("k"),
            F.rand().alias("v"),
        )

    rows(48000, 1).write.format("delta").partitionBy("d").save(f"{root}/partitioned")
    rows(48000, 1).write.format("delta").save(f"{root}/flat")

    def measure(label: str, op: Callable[[int], object]) -> None:
        for i in range(3):
            sc.setJobGroup(f"{label}-{i}", label)
            cpu, wall = jvm_cpu(), time.monotonic()
            op(i)
            took, used = time.monotonic() - wall, jvm_cpu() - cpu
        jobs = sorted(sc.statusTracker().getJobIdsForGroup(f"{label}-2"))
        stages = [len(info.stageIds) for j in jobs if (info := sc.statusTracker().getJobInfo(j))]
        print(f"{label:34s} wall {took:5.2f} s  JVM CPU {used:5.2f} s  jobs {len(jobs):2d}  stages {stages}")

    def replace(table: str) -> Callable[[int], object]:
        return lambda i: (
            rows(48, 2)
            .write.format("delta")
            .mode("overwrite")
            .option("replaceWhere", "d = DATE'2021-01-02'")
            .save(f"{root}/{table}")
        )

    def merge(i: int) -> None:
        (
            DeltaTable.forPath(spark, f"{root}/partitioned")
            .alias("t")
            .merge(rows(48, 3).alias("s"), "t.d = s.d AND t.k = s.k")
            .whenMatchedUpdateAll()
            .whenNotMatchedInsertAll()
            .execute()
        )

    try:
        measure(
            "append 48 rows",
            lambda i: rows(48, 2 + i).write.format("delta").mode("append").save(f"{root}/partitioned"),
        )
        measure("replaceWhere, data column", replace("flat"))
        measure("replaceWhere, partition column", replace("partitioned"))
        measure("MERGE 48 rows", merge)
        measure(
            "read, filter, count",
            lambda i: (
                spark.read.format("delta").load(f"{root}/partitioned").filter("d = DATE'2021-01-02'").count()
            ),
        )
    finally:
        spark.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
