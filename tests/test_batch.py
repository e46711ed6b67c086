"""The foreachBatch handler driven directly (no stream), checked against the independent reference."""

from __future__ import annotations

import json
import os
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config, read_tables
from pyspark.sql import DataFrame, SparkSession
from reference import (
    TABLE_KEYS,
    FileDelivery,
    assert_tables_match,
    expected_rejections,
    expected_staging,
    expected_tables,
    load_deliveries,
    reconciliation_errors,
)

from streaming import schemas
from streaming.batch import Pipeline
from streaming.generator import SampleSpec, write_sample
from streaming.source import parse_files

TZ = "Europe/London"
SPEC = SampleSpec(meterpoints=6, days=2)
CONTRACT_TABLES = list(TABLE_KEYS)
ALL_TABLES = [
    "raw/readings",
    "raw/agreement",
    "raw/product",
    "raw/meterpoint",
    "quarantine/readings",
    "quarantine/files",
    *CONTRACT_TABLES,
]
PRODUCT_DAY = "presentation/consumption_per_product_per_day"
STAGING = "staging/readings"


class Sample:
    """A generated sample, a pipeline on it (tables prepared) and helpers to feed it batches."""

    def __init__(self, spark: SparkSession, tmp: Path) -> None:
        self.spark = spark
        self.summary = write_sample(tmp / "data", SPEC)
        self.readings = tmp / "data" / "readings"
        self.db = tmp / "data" / "case_study.db"
        self.cfg = make_config(tmp, readings=self.readings, db=self.db)
        self.pipeline = Pipeline(spark, self.cfg)
        self.pipeline.prepare()
        self.pipeline.app_id = "test-app"  # no checkpoint to read the query id from
        self.batches: list[list[FileDelivery]] = []

    def batch_df(self, files: list[Path]) -> DataFrame:
        """The micro-batch the file source would hand over for `files`."""
        files_df = (
            self.spark.read.format("binaryFile")
            .schema(schemas.BINARY_FILE)
            .load([str(f) for f in files])
        )
        return parse_files(files_df, TZ)

    def process(self, files: list[Path], batch_id: int) -> None:
        self.pipeline.process_batch(self.batch_df(files), batch_id)
        self.batches.append(load_deliveries(files))

    def tables(self, names: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
        return read_tables(self.spark, self.cfg.lake, names or ALL_TABLES)

    def expected(self) -> dict[str, list[dict[str, Any]]]:
        return expected_tables(expected_staging(self.batches, TZ), self.db, as_of=self.cfg.as_of)

    def check_against_reference(self) -> dict[str, list[dict[str, Any]]]:
        actual = self.tables()
        assert_tables_match(actual, self.expected(), TABLE_KEYS)
        assert reconciliation_errors(actual) == []
        return actual


def sample_files(readings: Path) -> list[Path]:
    return sorted(p for p in readings.glob("*.json") if not p.name.startswith((".", "_")))


def write_json(path: Path, doc: Any, mtime: datetime | None = None) -> Path:
    path.write_text(json.dumps(doc))
    if mtime is not None:
        ts = mtime.timestamp()
        os.utime(path, (ts, ts))
    return path


def content(rows: list[dict[str, Any]]) -> list[str]:
    """A table's content as a sorted list of row texts (order-free, exact)."""
    return sorted(repr(sorted(r.items())) for r in rows)


def data_rows(files: list[Path]) -> int:
    """Data rows across the readable files: raw/readings keeps one row per line delivered."""
    n = 0
    for f in files:
        try:
            doc = json.loads(f.read_bytes())
        except ValueError:
            continue
        n += len(doc["data"])
    return n


@pytest.fixture()
def sample(spark: SparkSession, tmp_path: Path) -> Sample:
    return Sample(spark, tmp_path)


# ---------------------------------------------------------------- one batch


def test_first_batch_of_the_sample_matches_the_reference(sample: Sample) -> None:
    mp = sample.summary["roles"]["starts_on_start"][0]
    broken = sample.readings / "broken.json"  # truncated: the whole file is quarantined
    broken.write_text('{"columns": ["interval_start", "consumption_delta", "meterpoint_id"], "data": [["2021')
    mixed = write_json(
        sample.readings / "mixed.json",
        {
            "columns": ["meterpoint_id", "consumption_delta", "interval_start"],
            "data": [
                [mp, 0.1, "2021-01-01 00:15:00"],  # not on the half hour
                [mp, -1, "2021-01-01 00:30:00"],  # negative
                [mp, 0.1, "2021-03-28 01:00:00"],  # does not exist in London
            ],
        },
    )
    files = sample_files(sample.readings)
    assert broken in files and mixed in files

    sample.process(files, 0)

    actual = sample.check_against_reference()
    assert len(actual["raw/readings"]) == data_rows(files)
    assert {r["batch_id"] for r in actual["raw/readings"]} == {0}
    assert "quality" in actual["raw/readings"][0]  # the extra column of one file is kept raw

    bad_rows, bad_files = expected_rejections(sample.batches, TZ)
    assert sorted((Path(p).name, i) for p, i, _ in bad_rows) == [("mixed.json", 0), ("mixed.json", 1), ("mixed.json", 2)]
    assert sorted((Path(r["source_file"]).name, r["row_index"]) for r in actual["quarantine/readings"]) == sorted(
        (Path(p).name, i) for p, i, _ in bad_rows
    )
    assert [Path(p).name for p, _ in bad_files] == ["broken.json"]
    assert [Path(r["source_file"]).name for r in actual["quarantine/files"]] == ["broken.json"]
    reasons = sorted(r["reason"].split(":")[0] for r in actual["quarantine/readings"])
    assert reasons == ["negative_consumption", "nonexistent_local_time", "not_half_hour"]


# ---------------------------------------------------------------- replay


def test_replaying_the_same_batch_id_leaves_every_table_unchanged(sample: Sample) -> None:
    files = sample_files(sample.readings)
    sample.process(files, 0)
    before = sample.tables()

    sample.pipeline.process_batch(sample.batch_df(files), 0)  # a restart replays batch 0

    after = sample.tables()
    assert len(after["raw/readings"]) == len(before["raw/readings"]) == data_rows(files)
    for name in ALL_TABLES:
        assert content(after[name]) == content(before[name]), f"{name} changed on replay"
    sample.check_against_reference()


# ---------------------------------------------------------------- corrections across batches


def test_correction_in_a_later_batch_wins_even_with_an_older_modification_time(sample: Sample) -> None:
    first = sample_files(sample.readings)
    sample.process(first, 0)
    newest_first = max(f.stat().st_mtime for f in first)

    mp = sample.summary["roles"]["switch"][0]
    slots = ["2021-01-01 10:00:00", "2021-01-01 10:30:00", "2021-01-02 08:00:00"]
    staged = {
        (r["interval_start_local"].strftime("%Y-%m-%d %H:%M:%S")): r["consumption_kwh"]
        for r in sample.tables([STAGING])[STAGING]
        if r["meterpoint_id"] == mp
    }
    corrected = {slot: round(staged[slot] + 1.25, 3) for slot in slots}
    old = datetime(2020, 6, 1, tzinfo=UTC)
    correction = write_json(
        sample.readings / "aaa_correction.json",  # sorts first by name too
        {
            "columns": ["interval_start", "consumption_delta", "meterpoint_id"],
            "data": [[slot, kwh, mp] for slot, kwh in corrected.items()],
        },
        mtime=old,
    )
    assert correction.stat().st_mtime < newest_first

    sample.process([correction], 1)

    actual = sample.check_against_reference()
    now_staged = {
        r["interval_start_local"].strftime("%Y-%m-%d %H:%M:%S"): r
        for r in actual[STAGING]
        if r["meterpoint_id"] == mp
    }
    for slot, kwh in corrected.items():
        assert now_staged[slot]["consumption_kwh"] == kwh
        assert Path(now_staged[slot]["source_file"]).name == "aaa_correction.json"
    # both corrected dates were recomputed (the switch meterpoint changes product on the second)
    half_hours = {r["interval_start_local"]: r["total_kwh"] for r in actual["presentation/total_consumption_half_hour"]}
    for local in (datetime(2021, 1, 1, 10, 0), datetime(2021, 1, 2, 8, 0)):
        assert half_hours[local] == pytest.approx(
            sum(r["consumption_kwh"] for r in actual[STAGING] if r["interval_start_local"] == local)
        )
    assert len(actual["raw/readings"]) == data_rows(first) + len(slots)
    assert sorted(r["batch_id"] for r in actual["raw/readings"] if r["batch_id"] == 1) == [1] * len(slots)


def test_duplicate_delivery_in_a_later_batch_changes_nothing_downstream(sample: Sample) -> None:
    first = sample_files(sample.readings)
    sample.process(first, 0)
    before = sample.tables(CONTRACT_TABLES)

    copy = sample.readings / "again_readings_2021-01-01.json"
    original = sample.readings / f"readings_2021-01-01_{sample.summary['roles']['switch'][0]}.json"
    copy.write_bytes(original.read_bytes())
    sample.process([copy], 1)

    after = sample.check_against_reference()
    for name in CONTRACT_TABLES:
        assert content(after[name]) == content(before[name]), f"{name} changed on a duplicate delivery"


# ---------------------------------------------------------------- NULL display name group


def test_merge_on_null_product_display_name_group_does_not_duplicate_rows(sample: Sample) -> None:
    first = sample_files(sample.readings)
    sample.process(first, 0)
    mp = sample.summary["roles"]["no_agreement"][0]
    staged = sample.tables([STAGING])[STAGING]
    assert {r["product_display_name"] for r in staged if r["meterpoint_id"] == mp} == {None}

    later = write_json(
        sample.readings / "late_no_agreement.json",
        {
            "columns": ["interval_start", "consumption_delta", "meterpoint_id"],
            "data": [
                ["2021-01-01 12:00:00", 0.875, mp],  # a correction on a date already there
                ["2021-01-02 12:30:00", 0.625, mp],
            ],
        },
    )
    sample.process([later], 1)

    actual = sample.check_against_reference()
    null_rows = [r for r in actual[PRODUCT_DAY] if r["product_display_name"] is None]
    dates = [r["date"] for r in null_rows]
    assert sorted(dates) == sorted(set(dates))
    assert date(2021, 1, 1) in dates and date(2021, 1, 2) in dates
    keys = [(r["product_display_name"], r["date"]) for r in actual[PRODUCT_DAY]]
    assert len(keys) == len(set(keys))
    gold_keys = [
        (r["product_display_name"], r["interval_start"])
        for r in actual["presentation/gold_avg_half_hour_by_product"]
    ]
    assert len(gold_keys) == len(set(gold_keys))
