"""The benchmark's own measuring: what it reads from /proc (no timings asserted)."""

from __future__ import annotations

import subprocess
import sys
import time

from pyspark.sql import SparkSession

from streaming import bench


def test_jvm_thread_cpu_splits_the_jvms_cpu_by_thread_role(spark: SparkSession) -> None:
    spark.range(200_000).selectExpr("sum(id * 2)").collect()  # some executor work
    jvm = int(spark.sparkContext._jvm.ProcessHandle.current().pid())  # type: ignore[union-attr]

    roles = bench.jvm_thread_cpu(jvm)
    total = bench.process_cpu_seconds(jvm)

    assert set(roles) <= {"jit_c2", "jit_c1", "tasks", "gc", "other"}
    assert {"jit_c1", "jit_c2", "other"} <= set(roles)  # a JVM that has run queries has compiled code
    assert all(seconds >= 0 for seconds in roles.values())
    # live threads only, each read after the process total: never more than the process used
    assert sum(roles.values()) <= bench.process_cpu_seconds(jvm) + 0.05
    assert sum(roles.values()) > 0.2 * total


def test_tree_memory_reads_pss_every_nth_sample_and_reuses_it_between() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; x = bytearray(64 * 2**20); time.sleep(30)"],
    )
    try:
        deadline = time.monotonic() + 20
        memory = bench.TreeMemory(child.pid)
        while memory.peak < 64 * 2**20 and time.monotonic() < deadline:
            memory.sample()
        reads: list[int] = []
        real_pss = bench._pss

        def counting_pss(pid: int) -> int:
            reads.append(pid)
            return real_pss(pid)

        bench._pss = counting_pss  # type: ignore[assignment]
        try:
            before = memory.samples
            for _ in range(2 * memory.PSS_EVERY):
                memory.sample()
        finally:
            bench._pss = real_pss  # type: ignore[assignment]
        sampled = range(before, before + 2 * memory.PSS_EVERY)
        assert reads == [child.pid] * sum(1 for n in sampled if n % memory.PSS_EVERY == 0) == [child.pid] * 2
        summary = memory.summary()
        assert summary["peak_rss_mb"] >= 64
        assert 64 <= summary["peak_pss_mb"] <= summary["peak_rss_mb"]
    finally:
        child.kill()
        child.wait()
