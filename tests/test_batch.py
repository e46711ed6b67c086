"""The foreachBatch handler driven directly (no stream), checked against the independent reference.

One generated sample goes through `Pipeline.process_batch` as a stream would hand
it over: batch 0 (the whole sample plus a broken file and bad rows), batch 0
again (a replay after a crash), then batch 1 (a correction with an old
modification time, a duplicate delivery, late readings of a meterpoint without
agreement). Each stage's tables are kept, and each test checks one behaviour on
them: one Pipeline for the module keeps the Spark work small.
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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
STAGING = "staging/readings"
HALF_HOUR = "presentation/total_consumption_half_hour"
PRODUCT_DAY = "presentation/consumption_per_product_per_day"
GOLD_PRODUCT_HALF_HOUR = "presentation/gold_avg_half_hour_by_product"
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
COLUMNS = ["interval_start", "consumption_delta", "meterpoint_id"]
CORRECTED_SLOTS = ["2021-01-01 10:00:00", "2021-01-01 10:30:00", "2021-01-02 08:00:00"]
BACKFILL_DATES = {date(2020, 11, 22), date(2020, 11, 23), date(2020, 11, 24)}
Tables = dict[str, list[dict[str, Any]]]


# ---------------------------------------------------------------- helpers


def write_json(path: Path, doc: Any, mtime: datetime | None = None) -> Path:
    path.write_text(json.dumps(doc))
    if mtime is not None:
        os.utime(path, (mtime.timestamp(), mtime.timestamp()))
    return path


def data_rows(files: list[Path]) -> int:
    """Data rows across the readable files: raw/readings keeps one row per line delivered."""
    n = 0
    for f in files:
        try:
            n += len(json.loads(f.read_bytes())["data"])
        except ValueError:
            continue
    return n


def content(rows: list[dict[str, Any]]) -> list[str]:
    """A table's content as a sorted list of row texts (order-free, exact)."""
    return sorted(repr(sorted(r.items())) for r in rows)


def wall_clock(row: dict[str, Any]) -> str:
    return row["interval_start_local"].strftime("%Y-%m-%d %H:%M:%S")


def assert_same_rows(before: list[dict[str, Any]], after: list[dict[str, Any]], ignore: set[str]) -> None:
    """Equal as multisets: `total_kwh`/`avg_kwh` to rounding, `ignore`d columns not compared."""
    floats = {"total_kwh", "avg_kwh"}

    def split(rows: list[dict[str, Any]]) -> list[tuple[str, list[float]]]:
        return sorted(
            (
                repr(sorted((k, v) for k, v in r.items() if k not in floats | ignore)),
                [r[k] for k in sorted(floats & r.keys())],
            )
            for r in rows
        )

    b, a = split(before), split(after)
    assert [k for k, _ in a] == [k for k, _ in b]
    for (_, fa), (_, fb) in zip(a, b, strict=True):
        assert fa == pytest.approx(fb)


@dataclass
class Run:
    """A pipeline on a generated sample, the batches it processed and the tables after each."""

    spark: SparkSession
    pipeline: Pipeline
    summary: dict[str, Any]
    readings: Path
    db: Path
    lake: str
    batches: list[list[FileDelivery]] = field(default_factory=list)
    files: dict[str, list[Path]] = field(default_factory=dict)
    after: dict[str, Tables] = field(default_factory=dict)

    def batch_df(self, files: list[Path]) -> DataFrame:
        """The micro-batch the file source would hand over for `files`."""
        files_df = (
            self.spark.read.format("binaryFile").schema(schemas.BINARY_FILE).load([str(f) for f in files])
        )
        return parse_files(files_df, TZ)

    def process(self, stage: str, files: list[Path], batch_id: int, record: bool = True) -> None:
        self.pipeline.process_batch(self.batch_df(files), batch_id)
        if record:
            self.batches.append(load_deliveries(files))
        self.files[stage] = files
        self.after[stage] = self.tables(ALL_TABLES)

    def tables(self, names: list[str]) -> Tables:
        """Several lake tables read side by side (each read is mostly driver latency)."""
        with ThreadPoolExecutor(max_workers=4) as pool:
            parts = pool.map(lambda name: read_tables(self.spark, self.lake, [name]), names)
        return {name: rows for part in parts for name, rows in part.items()}

    def expected(self, batches: list[list[FileDelivery]]) -> Tables:
        return expected_tables(expected_staging(batches, TZ), self.db)

    def role(self, name: str) -> str:
        return str(self.summary["roles"][name][0])


@pytest.fixture(scope="module")
def run(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Run:
    tmp = tmp_path_factory.mktemp("batch")
    summary = write_sample(tmp / "data", SPEC)
    readings = tmp / "data" / "readings"
    db = tmp / "data" / "case_study.db"
    cfg = make_config(tmp, readings=readings, db=db)
    pipeline = Pipeline(spark, cfg)
    pipeline.prepare()
    pipeline.app_id = "test-app"  # no checkpoint to read the query id from
    r = Run(spark, pipeline, summary, readings, db, cfg.lake)

    # batch 0: the whole sample, a truncated file and a file of bad rows
    (readings / "broken.json").write_text(
        '{"columns": ["interval_start", "consumption_delta", "meterpoint_id"], "data": [["2021'
    )
    mp = r.role("starts_on_start")
    write_json(
        readings / "mixed.json",
        {
            "columns": ["meterpoint_id", "consumption_delta", "interval_start"],
            "data": [
                [mp, 0.1, "2021-01-01 00:15:00"],  # not on the half hour
                [mp, -1, "2021-01-01 00:30:00"],  # negative
                [mp, 0.1, "2021-03-28 01:00:00"],  # does not exist in London
            ],
        },
    )
    first = sorted(readings.glob("*.json"))
    r.process("first", first, 0)

    # batch 0 again, as a restart after a crash would replay it
    r.process("replay", first, 0, record=False)

    # batch 1: a correction with an old mtime, a duplicate delivery, late no-agreement readings
    extra = tmp / "later"
    extra.mkdir()
    switch = r.role("switch")
    staged = {
        wall_clock(s): s["consumption_kwh"] for s in r.after["first"][STAGING] if s["meterpoint_id"] == switch
    }
    corrected = {slot: round(staged[slot] + 1.25, 3) for slot in CORRECTED_SLOTS}
    correction = write_json(
        extra / "aaa_correction.json",  # sorts before every other name, too
        {"columns": COLUMNS, "data": [[slot, kwh, switch] for slot, kwh in corrected.items()]},
        mtime=datetime(2020, 6, 1, tzinfo=UTC),
    )
    backfill = readings / r.summary["quirk_files"]["backfill"]
    duplicate = extra / f"again_{backfill.name}"
    duplicate.write_bytes(backfill.read_bytes())
    late = write_json(
        extra / "late_no_agreement.json",
        {
            "columns": COLUMNS,
            "data": [
                ["2021-01-01 12:00:00", 0.875, r.role("no_agreement")],  # a correction
                ["2021-01-02 12:30:00", 0.625, r.role("no_agreement")],
            ],
        },
    )
    r.process("second", [correction, duplicate, late], 1)
    r.summary["corrected_values"] = corrected
    return r


# ---------------------------------------------------------------- batch 0


def test_first_batch_of_the_sample_matches_the_reference(run: Run) -> None:
    actual = run.after["first"]
    assert_tables_match(actual, run.expected(run.batches[:1]), TABLE_KEYS)
    assert reconciliation_errors(actual) == []


def test_first_batch_lands_every_delivered_line_in_raw_readings(run: Run) -> None:
    raw = run.after["first"]["raw/readings"]
    assert len(raw) == data_rows(run.files["first"])
    assert {r["batch_id"] for r in raw} == {0}
    # one file of the sample carries an extra column: it is kept in the raw layer
    assert {r["quality"] for r in raw} - {None}
    extra_file = run.summary["quirk_files"]["extra_column"]
    assert all(r["quality"] is not None for r in raw if Path(r["source_file"]).name == extra_file)


def test_first_batch_quarantines_the_broken_file_and_the_bad_rows(run: Run) -> None:
    actual = run.after["first"]
    bad_rows, bad_files = expected_rejections(run.batches[:1], TZ)
    assert sorted((Path(p).name, i) for p, i, _ in bad_rows) == [
        ("mixed.json", 0),
        ("mixed.json", 1),
        ("mixed.json", 2),
    ]
    assert sorted((Path(r["source_file"]).name, r["row_index"]) for r in actual["quarantine/readings"]) == [
        ("mixed.json", 0),
        ("mixed.json", 1),
        ("mixed.json", 2),
    ]
    assert sorted(r["reason"].split(":")[0] for r in actual["quarantine/readings"]) == [
        "negative_consumption",
        "nonexistent_local_time",
        "not_half_hour",
    ]
    assert [Path(p).name for p, _ in bad_files] == ["broken.json"]
    assert [Path(r["source_file"]).name for r in actual["quarantine/files"]] == ["broken.json"]


# ---------------------------------------------------------------- replay of batch 0


def test_replaying_the_same_batch_id_leaves_every_table_unchanged(run: Run) -> None:
    before, after = run.after["first"], run.after["replay"]
    assert len(after["raw/readings"]) == len(before["raw/readings"]) == data_rows(run.files["first"])
    changed = {name: len(set(content(after[name])) ^ set(content(before[name]))) for name in ALL_TABLES}
    # exact: a replay must not rewrite a single value, not even in its last bit
    assert {name: n for name, n in changed.items() if n} == {}


def test_replaying_the_same_batch_id_keeps_presentation_equal_to_rounding(run: Run) -> None:
    before, after = run.after["first"], run.after["replay"]
    for name in CONTRACT_TABLES:
        assert_same_rows(before[name], after[name], ignore=set())


def test_replaying_the_same_batch_id_leaves_raw_quarantine_and_staging_unchanged(run: Run) -> None:
    before, after = run.after["first"], run.after["replay"]
    for name in ("raw/readings", "quarantine/readings", "quarantine/files", STAGING, "raw/agreement"):
        assert content(after[name]) == content(before[name]), f"{name} changed on replay"


def test_replayed_batch_still_matches_the_reference(run: Run) -> None:
    actual = run.after["replay"]
    assert_tables_match(actual, run.expected(run.batches[:1]), TABLE_KEYS)
    assert reconciliation_errors(actual) == []


def test_batch_log_counts_new_corrected_and_duplicate_rows_and_times_each_phase(run: Run) -> None:
    first, replay, second = run.pipeline.batches[:3]
    staged = {(r["meterpoint_id"], r["interval_start"]): r for r in run.after["first"][STAGING]}
    later = {(r["meterpoint_id"], r["interval_start"]): r for r in run.after["second"][STAGING]}
    compared = ("consumption_kwh", "agreement_id", "product_id", "region")
    changed = [k for k in staged if any(staged[k][c] != later[k][c] for c in compared)]
    assert changed, "the second batch corrects readings"

    assert (first["staged_new"], first["staged_corrected"]) == (len(staged), 0)
    # the replay writes nothing: every row equals what staging holds
    assert (replay["staged_new"], replay["staged_corrected"]) == (0, 0)
    assert replay["duplicates"] == replay["rows"] - replay["rows_quarantined"]
    assert second["staged_new"] == len(later) - len(staged)
    assert second["staged_corrected"] == len(changed)
    for line in (first, replay, second):
        phases = line["phases_s"]
        assert {"parse", "raw", "staging", "presentation"} <= set(phases)
        # parse, then staging, then presentation, one after the other within the batch
        # (the raw append runs beside them); each figure is rounded to 0.01 s
        assert phases["parse"] + phases["staging"] + phases["presentation"] <= line["duration_s"] + 0.03
        assert phases["raw"] <= line["duration_s"] + 0.01


# ---------------------------------------------------------------- batch 1


def test_second_batch_matches_the_reference_of_both_batches_in_order(run: Run) -> None:
    actual = run.after["second"]
    assert_tables_match(actual, run.expected(run.batches), TABLE_KEYS)
    assert reconciliation_errors(actual) == []
    assert len(actual["raw/readings"]) == data_rows(run.files["first"]) + data_rows(run.files["second"])
    assert sum(r["batch_id"] == 1 for r in actual["raw/readings"]) == data_rows(run.files["second"])


def test_correction_in_a_later_batch_wins_even_with_an_older_modification_time(run: Run) -> None:
    correction = run.files["second"][0]
    newest_first = max(f.stat().st_mtime for f in run.files["first"])
    assert correction.stat().st_mtime < newest_first
    switch = run.role("switch")
    staged = {wall_clock(r): r for r in run.after["second"][STAGING] if r["meterpoint_id"] == switch}
    for slot, kwh in run.summary["corrected_values"].items():
        assert staged[slot]["consumption_kwh"] == kwh
        assert Path(staged[slot]["source_file"]).name == "aaa_correction.json"
    before = {
        wall_clock(r): r["consumption_kwh"]
        for r in run.after["first"][STAGING]
        if r["meterpoint_id"] == switch
    }
    assert all(before[slot] != kwh for slot, kwh in run.summary["corrected_values"].items())


def test_correction_in_a_later_batch_updates_presentation_of_its_dates(run: Run) -> None:
    first, second = run.after["replay"], run.after["second"]
    corrected = run.summary["corrected_values"]
    switch = run.role("switch")
    old = {wall_clock(r): r["consumption_kwh"] for r in first[STAGING] if r["meterpoint_id"] == switch}
    totals_before = {wall_clock(r): r["total_kwh"] for r in first[HALF_HOUR]}
    totals_after = {wall_clock(r): r["total_kwh"] for r in second[HALF_HOUR]}
    for slot, kwh in corrected.items():
        assert totals_after[slot] == pytest.approx(totals_before[slot] - old[slot] + kwh)
    # every half-hour total is the sum of the staging rows of its instant
    for row in second[HALF_HOUR]:
        staged = [
            s["consumption_kwh"] for s in second[STAGING] if s["interval_start"] == row["interval_start"]
        ]
        assert row["total_kwh"] == pytest.approx(math.fsum(staged))
        assert row["meterpoint_count"] == len(staged)


def test_duplicate_delivery_in_a_later_batch_never_counts_twice(run: Run) -> None:
    before, after = run.after["replay"], run.after["second"]
    # the late no-agreement readings and the correction replace readings: no new key
    assert len(after[STAGING]) == len(before[STAGING])
    dates_of = {
        STAGING: lambda r: r["reading_date"],
        PRODUCT_DAY: lambda r: r["date"],
        HALF_HOUR: lambda r: r["interval_start_local"].date(),
        GOLD_PRODUCT_HALF_HOUR: lambda r: r["interval_start_local"].date(),
    }
    for name, date_of in dates_of.items():
        old = [r for r in before[name] if date_of(r) in BACKFILL_DATES]
        new = [r for r in after[name] if date_of(r) in BACKFILL_DATES]
        assert old, name
        assert_same_rows(old, new, ignore={"ingested_at", "source_file"})


def test_merge_on_null_product_display_name_group_does_not_duplicate_rows(run: Run) -> None:
    no_agreement = run.role("no_agreement")
    for stage in ("first", "second"):
        staged = run.after[stage][STAGING]
        assert {r["product_display_name"] for r in staged if r["meterpoint_id"] == no_agreement} == {None}
    touched = {date(2021, 1, 1), date(2021, 1, 2)}
    for stage in ("first", "replay", "second"):
        rows = run.after[stage][PRODUCT_DAY]
        null_dates = [r["date"] for r in rows if r["product_display_name"] is None]
        assert touched <= set(null_dates), stage
        assert len(null_dates) == len(set(null_dates)), f"{stage}: several NULL-name rows for one date"
        keys = [(r["product_display_name"], r["date"]) for r in rows]
        assert len(keys) == len(set(keys)), stage
        gold = [
            (r["product_display_name"], r["interval_start"]) for r in run.after[stage][GOLD_PRODUCT_HALF_HOUR]
        ]
        assert len(gold) == len(set(gold)), stage
    # the NULL group of the touched dates now holds the late readings
    second = {r["date"]: r for r in run.after["second"][PRODUCT_DAY] if r["product_display_name"] is None}
    staged = run.after["second"][STAGING]
    for d in touched:
        rows = [s for s in staged if s["reading_date"] == d and s["product_display_name"] is None]
        assert second[d]["total_kwh"] == pytest.approx(math.fsum(s["consumption_kwh"] for s in rows))
        assert second[d]["meterpoint_count"] == len({s["meterpoint_id"] for s in rows})
