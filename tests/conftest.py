"""Shared fixtures: one Spark session per test run; data, lake and checkpoints under tmp_path."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from streaming.config import Config, load_config  # noqa: E402
from streaming.session import build_session  # noqa: E402

TEST_SPARK = {
    "spark.master": "local[2]",
    "spark.sql.shuffle.partitions": "2",
    "spark.default.parallelism": "2",
    "spark.ui.enabled": "false",
}


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    cfg = load_config(spark=TEST_SPARK)
    session = build_session(cfg)
    yield session
    session.stop()


def make_config(tmp: Path, readings: Path | None = None, db: Path | None = None, **overrides: Any) -> Config:
    """A config whose paths all live under `tmp` (created as needed)."""
    readings = readings or tmp / "readings"
    readings.mkdir(parents=True, exist_ok=True)
    return load_config(
        readings=str(readings),
        db=str(db or tmp / "case_study.db"),
        lake=str(tmp / "lake"),
        checkpoints=str(tmp / "checkpoints"),
        spark=TEST_SPARK,
        **overrides,
    )


def commits(spark: SparkSession, path: str) -> list[tuple[str, str]]:
    """(operation, engine) of each commit after the table's creation, oldest first;
    the engine is `Apache-Spark` or `delta-rs` (the product in `engineInfo`). A
    table delta-rs creates may take two commits (`small_writes.create_table`)."""
    history = spark.sql(f"DESCRIBE HISTORY delta.`{path}`").filter(
        "operation NOT IN ('CREATE TABLE', 'ADD FEATURE')"
    )
    return [
        (operation, engine.split("/")[0].split(":")[0])
        for operation, engine in history.orderBy("version").select("operation", "engineInfo").collect()
    ]


def read_tables(spark: SparkSession, lake: str, names: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Lake tables as lists of dicts (small test data only)."""
    return {
        name: [r.asDict() for r in spark.read.format("delta").load(f"{lake}/{name}").collect()]
        for name in names
    }
