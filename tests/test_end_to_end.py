"""The real run_stream.py end to end, checked against the independent reference."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, commits, make_config, read_tables
from pyspark.sql import SparkSession
from reference import (
    TABLE_KEYS,
    FileDelivery,
    assert_tables_match,
    expected_staging,
    expected_tables,
    load_deliveries,
    reconciliation_errors,
)

from streaming import runner
from streaming.generator import SampleSpec, write_delivery, write_sample

SPEC = SampleSpec(meterpoints=12, days=3, seed=7)
TABLES = list(TABLE_KEYS)


def run_cli(tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        str(ROOT / "run_stream.py"),
        "--readings",
        str(tmp / "data" / "readings"),
        "--db",
        str(tmp / "data" / "case_study.db"),
        "--lake",
        str(tmp / "lake"),
        "--checkpoints",
        str(tmp / "checkpoints"),
        *extra,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp)


def check_against_reference(spark: SparkSession, tmp: Path, batches: list[list[FileDelivery]]) -> dict:
    actual = read_tables(spark, str(tmp / "lake"), TABLES)
    expected = expected_tables(expected_staging(batches, "Europe/London"), tmp / "data" / "case_study.db")
    assert_tables_match(actual, expected, TABLE_KEYS)
    assert reconciliation_errors(actual) == []
    return actual


@pytest.mark.e2e
def test_run_stream_first_run_second_delivery_and_idempotent_rerun(
    spark: SparkSession, tmp_path: Path
) -> None:
    write_sample(tmp_path / "data", SPEC)
    readings = tmp_path / "data" / "readings"
    first = load_deliveries([readings])

    done = run_cli(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    check_against_reference(spark, tmp_path, [first])

    # second delivery: a new day, a retry, a correction, a backfill with an old mtime
    new_files = write_delivery(readings, None, SPEC, day_index=3, tag="d2")
    newest = max(d.mtime for d in first)
    assert any(os.stat(p).st_mtime < newest - 8 * 86400 for p in new_files), "backfill mtime not old"
    # (this run reuses the test's warm session: the CLI runs are the first and the last).
    # Spark's Delta writer makes its commits, delta-rs those of the CLI runs (small
    # writes, `small_writes = "auto"`): the two take turns on one lake.
    cfg = make_config(
        tmp_path, readings=readings, db=tmp_path / "data" / "case_study.db", small_writes="spark"
    )
    runner.run(cfg, spark=spark)
    second = [d for d in load_deliveries([readings]) if d.path not in {f.path for f in first}]
    assert len(second) == len(new_files)
    before = check_against_reference(spark, tmp_path, [first, second])

    # nothing new: the run succeeds and no table's content changes
    done = run_cli(tmp_path, "--report")
    assert done.returncode == 0, done.stderr[-3000:]
    after = check_against_reference(spark, tmp_path, [first, second])
    for name in TABLES:
        assert sorted(map(repr, before[name])) == sorted(map(repr, after[name])), name
    assert "staging/readings" in done.stdout
    # the ingestion log: one generation, every file of both deliveries logged
    log_line = f"ingestion log: {tmp_path / 'checkpoints' / 'readings'} (lake batches from 0): "
    assert f"{log_line}{len(first) + len(second):,} files logged; " in done.stdout
    # both writers committed to the tables the batches write
    for name in ("raw/readings", "staging/readings", "presentation/total_consumption_half_hour"):
        engines = {engine for _, engine in commits(spark, f"{cfg.lake}/{name}")}
        assert engines == {"Apache-Spark", "delta-rs"}, (name, engines)
