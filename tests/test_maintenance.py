"""Lake upkeep keeps every table's content and reduces its file count."""

from __future__ import annotations

from pathlib import Path

from conftest import make_config, read_tables
from pyspark.sql import SparkSession

from streaming import runner, sinks
from streaming.generator import SampleSpec, write_delivery, write_sample
from streaming.maintenance import maintain


def test_optimize_and_vacuum_keep_every_table_content(spark: SparkSession, tmp_path: Path) -> None:
    spec = SampleSpec(meterpoints=4, days=1, seed=3)
    write_sample(tmp_path / "data", spec)
    readings = tmp_path / "data" / "readings"
    cfg = make_config(tmp_path, readings=readings, db=tmp_path / "data" / "case_study.db")
    runner.run(cfg, spark=spark)
    write_delivery(readings, None, spec, day_index=1, tag="d2")
    runner.run(cfg, spark=spark)  # a second batch: more small files
    names = list(sinks.TABLES)
    before = read_tables(spark, cfg.lake, names)

    # two tables keep the test short (each OPTIMIZE + VACUUM is a few Spark jobs)
    result = maintain(
        spark, sinks.LakePaths(cfg.lake), retain_hours=168, names=[sinks.STAGING, sinks.RAW_READINGS]
    )

    after = read_tables(spark, cfg.lake, names)
    for name in names:
        assert sorted(map(repr, before[name])) == sorted(map(repr, after[name])), name
    assert result[sinks.STAGING]["files_after"] <= result[sinks.STAGING]["files_before"]
    assert result[sinks.RAW_READINGS]["files_after"] < result[sinks.RAW_READINGS]["files_before"]
