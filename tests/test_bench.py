"""The benchmark's own measuring (what it reads from /proc) and its warm scenario; no timings asserted."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from streaming import bench
from streaming.generator import SampleSpec, write_sample


def test_jvm_thread_cpu_splits_the_jvms_cpu_by_thread_role(spark: SparkSession) -> None:
    spark.range(200_000).selectExpr("sum(id * 2)").collect()  # some executor work
    jvm = int(spark.sparkContext._jvm.ProcessHandle.current().pid())  # type: ignore[union-attr]

    roles = bench.jvm_thread_cpu(jvm)

    assert set(roles) <= {"jit_c2", "jit_c1", "tasks", "gc", "other"}
    # a JVM that has run queries has compiled code and kept its task threads
    assert {"jit_c1", "jit_c2", "tasks", "other"} <= set(roles)
    assert all(seconds >= 0 for seconds in roles.values())
    # live threads only, read before the process total: never more than the process used
    total = bench.process_cpu_seconds(jvm)
    assert sum(roles.values()) <= total + 0.05
    assert sum(roles.values()) > 0.2 * total


def test_tree_memory_reads_pss_every_nth_sample_and_estimates_it_between(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; x = bytearray(64 * 2**20); time.sleep(30)"],
    )
    try:
        memory = bench.TreeMemory(child.pid)
        deadline = time.monotonic() + 20
        while memory.peak < 64 * 2**20:
            assert time.monotonic() < deadline, "the child never reached 64 MB"
            time.sleep(0.05)
            memory.sample()
        reads: list[int] = []
        real_pss = bench._pss

        def counting_pss(pid: int) -> int:
            reads.append(pid)
            return real_pss(pid)

        monkeypatch.setattr(bench, "_pss", counting_pss)
        between: list[int] = []
        first = memory.samples
        for n in range(first, first + 2 * memory.PSS_EVERY):
            memory.sample()
            if n % memory.PSS_EVERY:
                between.append(memory.last_pss)
        # two reads in ten samples, and the samples between them still count the child
        assert reads == [child.pid, child.pid]
        assert len(between) == 2 * memory.PSS_EVERY - 2
        assert all(pss >= 64 * 2**20 for pss in between)
        summary = memory.summary()
        assert summary["peak_rss_mb"] >= 64
        assert 64 <= summary["peak_pss_mb"] <= summary["peak_rss_mb"]
    finally:
        child.kill()
        child.wait()


def test_the_warm_scenario_reads_the_backfills_files_again_into_new_lakes(
    spark: SparkSession, tmp_path: Path
) -> None:
    """Two runs on the given session, each into a lake of its own that is removed after
    it; every row of the files is read each time, and a run that reads another number
    of rows than the cold run is an error, not a figure."""
    summary = write_sample(
        tmp_path / "backfill" / "data", SampleSpec(meterpoints=3, days=1, start=bench.START, seed=bench.SEED)
    )
    readings = Path(summary["readings_dir"])
    files_before = sorted(p.name for p in readings.iterdir())
    rows = sum(len(json.loads(p.read_text())["data"]) for p in readings.glob("*.json"))
    cold = {"readings_dir": str(readings), "readings": summary["readings"], "rows_processed": rows}
    work = tmp_path / "work"
    work.mkdir()

    warm = bench.bench_warm_backfill(work, spark, cold, work / "warm.log")

    assert len(warm["runs"]) == bench.WARM_RUNS == 2
    assert [r["rows"] for r in warm["runs"]] == [rows, rows]
    assert all(r["batches"] >= 1 and r["readings_per_s"] > 0 for r in warm["runs"])
    assert warm["run_s"] == warm["runs"][-1]["run_s"]
    assert set(warm["phases_s"]) >= {"parse", "raw", "staging", "presentation"}
    assert sorted(p.name for p in work.iterdir()) == ["warm.log"]  # the lakes are gone
    assert sorted(p.name for p in readings.iterdir()) == files_before  # the files are kept
    row = [r for r in bench.figures({"warm": warm}) if r[0].startswith("backfill on a warm session")]
    assert row and f"{warm['readings_per_s']:,} readings/s" in row[0][1]

    with pytest.raises(RuntimeError, match="warm run 1 read"):
        bench.bench_warm_backfill(work, spark, {**cold, "rows_processed": rows + 1}, work / "warm.log")


def test_the_warm_scenario_needs_the_backfills_files() -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(["--only", "warm"])
    assert bench.parse_args(["--only", "backfill,warm"]).only == ["backfill", "warm"]


def test_the_backfill_figure_is_the_median_of_its_cold_runs() -> None:
    def run(wall: float, load: float) -> dict:
        return {
            "wall_s": wall,
            "readings_per_s": round(720_000 / wall),
            "batch_s": wall - 8,
            "cpu_s": wall * 1.7,
            "load_average_before": [load],
            "memory": {"peak_rss_mb": 2500 + wall},
        }

    three = bench.median_run([run(32.6, 1.5), run(27.9, 2.0), run(29.4, 2.5)])
    assert (three["wall_s"], three["load_average_before"]) == (29.4, [2.5])
    assert three["memory"] == {"peak_rss_mb": 2532.6}  # the highest peak of the runs
    rows = dict(
        (r[0], r[1])
        for r in bench.figures(
            {
                "backfill": {
                    **three,
                    "meterpoints": 5000,
                    "days": 3,
                    "files": 15003,
                    "readings": 720_000,
                    "spark_startup_s": 3.1,
                    "readings_per_s_batch": 33_000,
                    "cpu_utilisation": 0.85,
                    "memory": {
                        **three["memory"],
                        "peak_parts_mb": {"jvm": 1660, "driver": 270, "workers": 600},
                        "peak_pss_mb": 2400,
                    },
                }
            }
        )
    )
    assert rows["backfill wall time, cold (JVM start incl., median of 3 runs)"] == "29.4 s"
    assert rows["backfill cold runs, in order"] == "32.6 / 27.9 / 29.4 s"
    assert [r["wall_s"] for r in three["runs"]] == [32.6, 27.9, 29.4]  # in the order run
    assert three["runs"][0]["peak_rss_mb"] == 2532.6
    assert bench.median_run([run(30.0, 1), run(28.0, 1)])["wall_s"] == 30.0  # the slower middle
    (only,) = bench.median_run([run(31.0, 1)])["runs"]
    assert only == {
        "wall_s": 31.0,
        "readings_per_s": 23226,
        "batch_s": 23.0,
        "cpu_s": 31.0 * 1.7,
        "load_average_before": [1],
        "peak_rss_mb": 2531.0,
    }
    assert bench.parse_args([]).backfill_runs == 3
    assert bench.parse_args(["--quick"]).backfill_runs == 1
    with pytest.raises(SystemExit):
        bench.parse_args(["--backfill-runs", "0"])


def test_the_scale_scenario_is_on_by_default_and_at_least_twice_the_input() -> None:
    assert bench.parse_args([]).scale == 2
    assert bench.parse_args(["--quick"]).scale == 2
    assert "scale" in bench.parse_args([]).only
    assert bench.parse_args(["--only", "scale"]).only == ["scale"]  # it generates its own files
    with pytest.raises(SystemExit):
        bench.parse_args(["--scale", "1"])
    assert bench.parse_args(["--only", "backfill", "--scale", "1"]).only == ["backfill"]  # not run


def _backfill_result(meterpoints: int, readings: int, peak_mb: float) -> dict:
    return {
        "meterpoints": meterpoints,
        "days": 3,
        "files": meterpoints * 3,
        "readings": readings,
        "wall_s": 30.0,
        "readings_per_s": round(readings / 30.0),
        "batch_s": 20.0,
        "memory": {"peak_rss_mb": peak_mb, "peak_parts_mb": {"jvm": peak_mb - 900}},
    }


def test_memory_is_judged_on_this_runs_two_sizes_before_recorded_ones(tmp_path: Path) -> None:
    # a quick run recorded earlier never fills the heap: against it the full
    # size would look like growth (2,637 > 1.25 x 1,800)
    recorded = {"label": "quick", "backfill": _backfill_result(300, 29_284, 1800.0)}
    (tmp_path / "results_quick.json").write_text(json.dumps(recorded))
    results = {
        "backfill": _backfill_result(5000, 720_484, 2637.0),
        "scale": _backfill_result(10000, 1_440_484, 3022.0),
    }
    sizes = bench.memory_by_size(tmp_path, "5000x3", results)
    assert [(m["label"], m["this_run"]) for m in sizes] == [
        ("300x3", False),
        ("5000x3", True),
        ("10000x3", True),
    ]
    assert bench.memory_flat(sizes) is True  # 3,022 <= 1.25 x 2,637
    rows = {r[0]: r for r in bench.figures({"scale": results["scale"], "memory_by_size": sizes})}
    row = rows["peak memory by input size"]
    assert row[3] == "yes"
    assert "300x3 (29,284 readings): 1800 MB (recorded earlier)" in row[1]
    assert rows["backfill at 10,000 mp x 3 d (1 cold run)"][1] == (
        "1,440,484 readings in 30.0 s = 48,016 readings/s (batch 20.0 s); peak RSS 3022 MB"
    )

    # growth between this run's own sizes is a NO
    grown = {**results, "scale": _backfill_result(10000, 1_440_484, 3400.0)}
    assert bench.memory_flat(bench.memory_by_size(tmp_path, "5000x3", grown)) is False
    # one size of this run: judged with the recorded sizes (as before the scale scenario)
    alone = bench.memory_by_size(tmp_path, "5000x3", {"backfill": results["backfill"]})
    assert bench.memory_flat(alone) is False
    # a scale run that failed is no verdict, whatever was recorded earlier
    failed = {"scale": {"error": "RuntimeError: exited 1"}, "memory_by_size": alone}
    failed_rows = {r[0]: r for r in bench.figures(failed)}
    assert failed_rows["peak memory by input size"][3] == "n/a (the scale run failed)"
    assert failed_rows["scale: FAILED"][1] == "RuntimeError: exited 1"
    # nothing to compare: no verdict
    assert (
        bench.memory_flat(
            bench.memory_by_size(tmp_path / "none", "5000x3", {"backfill": results["backfill"]})
        )
        is None
    )


def test_a_recorded_scale_run_is_a_size_of_its_own(tmp_path: Path) -> None:
    earlier = {
        "label": "5000x3",
        "backfill": _backfill_result(5000, 720_484, 2600.0),
        "scale": _backfill_result(10000, 1_440_484, 3000.0),
    }
    (tmp_path / "results_5000x3.json").write_text(json.dumps(earlier))
    # this run measured the 5000x3 size again: its figure replaces the recorded one
    sizes = bench.memory_by_size(tmp_path, "5000x3", {"backfill": _backfill_result(5000, 720_484, 2700.0)})
    assert [(m["label"], m["peak_rss_mb"], m["this_run"]) for m in sizes] == [
        ("5000x3", 2700.0, True),
        ("10000x3", 3000.0, False),
    ]
    assert bench.memory_flat(sizes) is True
