"""Tests of the sample-data generator (no Spark)."""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from streaming.generator import (
    COLUMNS,
    GeneratorError,
    SampleSpec,
    day_rows,
    dimension_roles,
    local_interval_starts,
    main,
    meterpoint_ids,
    reading_rng,
    write_delivery,
    write_readings_file,
    write_sample,
)

SMALL = SampleSpec(meterpoints=20, days=3, start=date(2021, 1, 1), seed=7)
WEEK_S = 7 * 24 * 3600


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int | None]]:
    """Every file under folder: bytes, and mtime in ns for readings (the database gets a real one)."""
    return {
        str(p.relative_to(folder)): (
            p.read_bytes(),
            p.stat().st_mtime_ns if p.suffix == ".json" else None,
        )
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _load(path: Path) -> list[dict[str, Any]]:
    """A readings file as a list of {column: value} rows."""
    doc = json.loads(path.read_text())
    return [dict(zip(doc["columns"], row, strict=True)) for row in doc["data"]]


def _db_rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of a query on the generated database."""
    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One small generated sample shared by the read-only tests."""
    out = tmp_path_factory.mktemp("sample")
    return out, write_sample(out, SMALL)


def test_same_seed_gives_identical_files_mtimes_and_db(tmp_path: Path) -> None:
    first = write_sample(tmp_path / "a", SMALL)
    second = write_sample(tmp_path / "b", SMALL)
    assert _snapshot(tmp_path / "a") == _snapshot(tmp_path / "b")
    assert first["dates"] == second["dates"]
    assert first["quirk_files"] == second["quirk_files"]


def test_rerun_into_same_folder_removes_stale_files(tmp_path: Path) -> None:
    write_sample(tmp_path, SMALL)
    before = _snapshot(tmp_path)
    (tmp_path / "readings" / "readings_1999-01-01_stale.json").write_text('{"columns": [], "data": []}')
    main(
        [
            "--out",
            str(tmp_path),
            "--meterpoints",
            "20",
            "--days",
            "3",
            "--start",
            "2021-01-01",
            "--seed",
            "7",
        ]
    )
    assert _snapshot(tmp_path) == before


def test_meterpoint_ids_are_deterministic_distinct_hex() -> None:
    ids = meterpoint_ids(500, 3)
    assert ids == meterpoint_ids(500, 3)
    assert ids[:10] == meterpoint_ids(10, 3)
    assert len(set(ids)) == 500
    assert all(len(mp) == 10 and int(mp, 16) >= 0 for mp in ids)
    assert meterpoint_ids(10, 4) != ids[:10]


def test_dst_days_have_46_and_50_half_hours_with_repeats_in_order() -> None:
    rng = reading_rng(1, "0432df65f7", date(2021, 3, 28))
    spring = [row[0] for row in day_rows("0432df65f7", date(2021, 3, 28), rng)]
    autumn = list(local_interval_starts(date(2021, 10, 31)))
    assert len(spring) == 46
    assert "2021-03-28 01:00:00" not in spring and "2021-03-28 01:30:00" not in spring
    assert len(autumn) == 50
    assert autumn[2:6] == ["2021-10-31 01:00:00", "2021-10-31 01:30:00"] * 2
    assert len(local_interval_starts(date(2021, 1, 1))) == 48


def test_sample_across_fall_back_writes_50_rows_per_meterpoint(tmp_path: Path) -> None:
    summary = write_sample(tmp_path, SampleSpec(meterpoints=5, days=3, start=date(2021, 10, 30)))
    assert summary["dates"]["2021-10-31"]["readings"] == 5 * 50
    for path in (tmp_path / "readings").glob("readings_2021-10-31_*.json"):
        assert len(_load(path)) == 50


def test_readings_are_realistic_half_hours(sample: tuple[Path, dict[str, Any]]) -> None:
    out, _ = sample
    for path in (out / "readings").glob("*.json"):
        for row in _load(path):
            assert row["interval_start"][14:] in ("00:00", "30:00")
            assert 0.02 <= row["consumption_delta"] <= 1.5
            assert round(row["consumption_delta"], 3) == row["consumption_delta"]
            assert len(row["meterpoint_id"]) == 10


def test_start_date_total_is_plain_sum_of_its_files(
    sample: tuple[Path, dict[str, Any]],
) -> None:
    out, summary = sample
    rows = [row for p in (out / "readings").glob("readings_2021-01-01_*.json") for row in _load(p)]
    assert summary["dates"]["2021-01-01"] == {
        "meterpoints": 20,
        "readings": 20 * 48,
        "total_kwh": round(sum(row["consumption_delta"] for row in rows), 3),
    }


def test_quirk_files_exist_with_later_or_old_mtimes(
    sample: tuple[Path, dict[str, Any]],
) -> None:
    out, summary = sample
    readings = out / "readings"
    quirks = summary["quirk_files"]
    regular = [p for p in readings.glob("readings_*.json")]
    newest_regular = max(p.stat().st_mtime for p in regular)
    oldest_regular = min(p.stat().st_mtime for p in regular)

    retry = readings / quirks["retry"]
    original = readings / quirks["retry"].removeprefix("retry_")
    assert retry.read_bytes() == original.read_bytes()
    assert retry.stat().st_mtime > newest_regular

    correction = readings / quirks["correction"]
    corrected = _load(correction)
    mp = corrected[0]["meterpoint_id"]
    originals = {
        r["interval_start"]: r["consumption_delta"]
        for r in _load(readings / f"readings_2021-01-03_{mp}.json")
    }
    assert corrected and all(r["consumption_delta"] != originals[r["interval_start"]] for r in corrected)
    assert correction.stat().st_mtime > retry.stat().st_mtime

    backfill = readings / quirks["backfill"]
    assert all(r["interval_start"] < "2021-01-01" for r in _load(backfill))
    assert backfill.stat().st_mtime < oldest_regular - 4 * WEEK_S

    reordered = json.loads((readings / quirks["reordered_columns"]).read_text())
    assert reordered["columns"] == [
        "meterpoint_id",
        "interval_start",
        "consumption_delta",
    ]
    extra = json.loads((readings / quirks["extra_column"]).read_text())
    assert extra["columns"] == [*COLUMNS, "quality"]
    assert not list(readings.glob(".*"))


def test_some_files_are_pretty_and_others_one_line(
    sample: tuple[Path, dict[str, Any]],
) -> None:
    out, _ = sample
    line_counts = {len(p.read_text().splitlines()) for p in (out / "readings").glob("readings_*.json")}
    assert 1 in line_counts and max(line_counts) > 100


def test_per_day_layout_holds_all_meterpoints_in_one_file(tmp_path: Path) -> None:
    write_sample(tmp_path, SampleSpec(meterpoints=6, days=2, files="per_day"))
    rows = _load(tmp_path / "readings" / "readings_2021-01-01.json")
    assert len(rows) == 6 * 48
    assert len({r["meterpoint_id"] for r in rows}) == 6


def test_dimension_db_has_case_study_quirks(
    sample: tuple[Path, dict[str, Any]],
) -> None:
    out, summary = sample
    db = out / "case_study.db"
    roles = summary["roles"]
    start = "2021-01-01"

    shared = _db_rows(db, "SELECT display_name FROM product GROUP BY display_name HAVING COUNT(*) > 1")
    assert ("Agile Octopus",) in shared
    assert {v for (v,) in _db_rows(db, "SELECT DISTINCT is_variable FROM product")} == {
        0,
        1,
    }
    assert _db_rows(db, "SELECT COUNT(*) FROM product WHERE id = product_id") == [(0,)]

    ids = [a for (a,) in _db_rows(db, "SELECT agreement_id FROM agreement")]
    assert len(ids) == len(set(ids))
    zero = _db_rows(
        db,
        "SELECT meterpoint_id FROM agreement WHERE agreement_valid_from = agreement_valid_to",
    )
    assert zero and {mp for (mp,) in zero} == set(roles["zero_length"])

    switch = roles["switch"][0]
    spans = _db_rows(
        db,
        f"SELECT agreement_valid_from, agreement_valid_to, product_id FROM agreement "
        f"WHERE meterpoint_id = '{switch}' ORDER BY agreement_valid_from",
    )
    assert spans[0][:2] == ("2020-12-02", "2021-01-02")
    assert spans[1][:2] == ("2021-01-02", None)
    assert spans[0][2] != spans[1][2]

    def covered(mp: str, day: str) -> bool:
        return bool(
            _db_rows(
                db,
                f"SELECT 1 FROM agreement WHERE meterpoint_id = '{mp}' AND agreement_valid_from <= '{day}' "
                f"AND (agreement_valid_to IS NULL OR agreement_valid_to > '{day}')",
            )
        )

    uncovered = roles["no_agreement"] + roles["ended_before_start"]
    assert uncovered and not any(covered(mp, start) for mp in uncovered)
    assert all(covered(mp, start) for mp in roles["starts_on_start"])
    assert all(covered(mp, start) and not covered(mp, "2021-01-03") for mp in roles["ends_in_range"])

    (overlap,) = roles["overlap"]
    both = _db_rows(
        db,
        f"SELECT agreement_valid_from, agreement_id FROM agreement "
        f"WHERE meterpoint_id = '{overlap}' ORDER BY agreement_valid_from",
    )
    assert len(both) == 2 and both[1][1] < both[0][1]  # later valid_from, smaller id

    listed = {mp for (mp,) in _db_rows(db, "SELECT meterpoint_id FROM meterpoint")}
    readings_mps = set(meterpoint_ids(SMALL.meterpoints, SMALL.seed))
    assert readings_mps - listed == set(roles["not_in_meterpoint_table"]) != set()


def test_roles_scale_to_about_five_percent_uncovered() -> None:
    roles = dimension_roles(meterpoint_ids(1000, 1), 1)
    assert len(roles["no_agreement"]) + len(roles["ended_before_start"]) == 50
    assert len(roles["not_in_meterpoint_table"]) == 20


def test_delivery_adds_new_day_retry_correction_and_old_backfill(
    tmp_path: Path,
) -> None:
    write_sample(tmp_path, SMALL)
    readings = tmp_path / "readings"
    before = {p.name for p in readings.glob("*.json")}
    paths = write_delivery(readings, tmp_path / "case_study.db", SMALL, day_index=3, tag="d1")

    assert all("d1" in p.name and p.name not in before for p in paths)
    new_day = [p for p in paths if p.name.startswith("readings_2021-01-04_")]
    assert len(new_day) == SMALL.meterpoints
    retry = next(p for p in paths if p.name.startswith("retry_"))
    assert retry.read_bytes() == (readings / retry.name.removeprefix("retry_d1_")).read_bytes()
    correction = next(p for p in paths if p.name.startswith("correction_"))
    assert _load(correction)
    backfill = next(p for p in paths if p.name.startswith("backfill_"))
    newest = max(p.stat().st_mtime for p in paths)
    assert backfill.stat().st_mtime < newest - WEEK_S

    onboarded = dimension_roles(meterpoint_ids(SMALL.meterpoints, SMALL.seed), SMALL.seed)["no_agreement"][0]
    rows = _db_rows(
        tmp_path / "case_study.db",
        f"SELECT agreement_valid_from FROM agreement WHERE meterpoint_id = '{onboarded}'",
    )
    assert rows == [((SMALL.start + timedelta(days=3)).isoformat(),)]


def test_write_readings_file_is_atomic_and_sets_mtime(tmp_path: Path) -> None:
    path = write_readings_file(
        tmp_path / "r.json",
        [["2021-01-01 00:00:00", 0.1, "0432df65f7"]],
        mtime=1_600_000_000.25,
    )
    assert json.loads(path.read_text())["columns"] == COLUMNS
    assert os.stat(path).st_mtime_ns == 1_600_000_000_250_000_000
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_unknown_layout_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(GeneratorError, match="files must be one of"):
        write_sample(tmp_path, SampleSpec(files="per_week"))
