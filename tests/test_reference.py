"""Pins the independent oracle (tests/reference.py) to shared/CONTRACT.md.

Plain Python, no Spark: small inline cases whose expected values are worked
out by hand from the contract.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reference import (
    ACTIVE,
    GOLD_HH,
    GOLD_PRODUCT_HH,
    PER_PRODUCT_DAY,
    STAGING,
    TABLE_KEYS,
    TOTAL_HH,
    FileDelivery,
    assert_tables_match,
    attribute,
    expected_rejections,
    expected_staging,
    expected_tables,
    load_deliveries,
    load_dimensions,
    parse_file,
    reconciliation_errors,
)

UTC = UTC
COLS = ["interval_start", "consumption_delta", "meterpoint_id"]


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def write_json(path: Path, obj, mtime: float | None = None) -> Path:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def readings_file(path: Path, rows, columns=COLS, mtime: float | None = None) -> Path:
    return write_json(path, {"columns": columns, "data": rows}, mtime)


def delivery(path: Path) -> FileDelivery:
    return load_deliveries([path])[0]


def make_db(
    path: Path,
    agreements=(),
    products=(),
    meterpoints=(),
) -> Path:
    con = sqlite3.connect(path)
    con.execute(
        "CREATE TABLE agreement (agreement_id INTEGER, agreement_valid_from TEXT, "
        "agreement_valid_to TEXT, product_id INTEGER, meterpoint_id TEXT, account_id TEXT)"
    )
    con.execute("CREATE TABLE product (display_name TEXT, is_variable, id INTEGER, product_id INTEGER)")
    con.execute("CREATE TABLE meterpoint (region TEXT, meterpoint_id TEXT)")
    con.executemany("INSERT INTO agreement VALUES (?,?,?,?,?,?)", agreements)
    con.executemany("INSERT INTO product VALUES (?,?,?,?)", products)
    con.executemany("INSERT INTO meterpoint VALUES (?,?)", meterpoints)
    con.commit()
    con.close()
    return path


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def only_staging(tmp_path, rows, columns=COLS):
    f = readings_file(tmp_path / "r.json", rows, columns)
    return expected_staging([[delivery(f)]], "Europe/London")


# --------------------------------------------------------------------------
# parsing: time
# --------------------------------------------------------------------------
def fall_back_local_sequence() -> list[str]:
    """The 50 local wall-clock half hours of 2021-10-31, in order."""
    out = []
    for h in range(24):
        for m in (0, 30):
            out.append(f"2021-10-31 {h:02d}:{m:02d}:00")
            if h == 1 and m == 30:
                out.extend(["2021-10-31 01:00:00", "2021-10-31 01:30:00"])
    return out


def test_fall_back_two_meterpoints_interleaved(tmp_path):
    seq = fall_back_local_sequence()
    assert len(seq) == 50
    rows = []
    for _i, ts in enumerate(seq):
        rows.append([ts, 0.1, "mpA"])
        rows.append([ts, 0.2, "mpB"])  # interleaved: occurrences count per meterpoint
    f = readings_file(tmp_path / "fb.json", rows)
    good, bad, freason = parse_file(f)
    assert freason is None and bad == []
    assert len(good) == 100
    for mp in ("mpA", "mpB"):
        insts = [g.instant for g in good if g.meterpoint_id == mp]
        assert len(insts) == 50 and len(set(insts)) == 50
        # 2021-10-31 00:00 BST = 2021-10-30 23:00Z, then every half hour
        assert insts == [utc(2021, 10, 30, 23, 0) + timedelta(minutes=30 * k) for k in range(50)]
        assert {g.reading_date for g in good if g.meterpoint_id == mp} == {date(2021, 10, 31)}
    a = [g for g in good if g.meterpoint_id == "mpA"]
    assert a[2].local == a[4].local == datetime(2021, 10, 31, 1, 0)
    assert a[2].instant == utc(2021, 10, 31, 0, 0)  # BST first
    assert a[4].instant == utc(2021, 10, 31, 1, 0)  # GMT second

    staging = expected_staging([[delivery(f)]])
    assert len(staging) == 100
    db = make_db(tmp_path / "d.db")
    t = expected_tables(staging, db)
    assert len(t[TOTAL_HH]) == 50
    assert all(r["meterpoint_count"] == 2 for r in t[TOTAL_HH])
    assert all(math.isclose(r["total_kwh"], 0.3) for r in t[TOTAL_HH])
    assert len(t[PER_PRODUCT_DAY]) == 1
    day = t[PER_PRODUCT_DAY][0]
    assert day["date"] == date(2021, 10, 31) and day["product_display_name"] is None
    assert day["meterpoint_count"] == 2 and math.isclose(day["total_kwh"], 15.0)
    assert reconciliation_errors(t) == []


def test_fall_back_third_occurrence_is_later_instant(tmp_path):
    rows = [
        ["2021-10-31 01:00:00", 1, "m"],
        ["2021-10-31 01:00:00", 2, "m"],
        ["2021-10-31 01:00:00", 3, "m"],
    ]
    staging = only_staging(tmp_path, rows)
    assert {k[1]: r.kwh for k, r in staging.items()} == {
        utc(2021, 10, 31, 0, 0): 1.0,
        utc(2021, 10, 31, 1, 0): 3.0,  # second and later -> GMT; later row wins
    }


def test_fall_back_occurrence_is_per_file(tmp_path):
    f1 = readings_file(tmp_path / "a.json", [["2021-10-31 01:30:00", 1, "m"]], mtime=1000)
    f2 = readings_file(tmp_path / "b.json", [["2021-10-31 01:30:00", 2, "m"]], mtime=2000)
    staging = expected_staging([[delivery(f1)], [delivery(f2)]])
    # each file's first occurrence is BST: the second file corrects the first
    assert list(staging) == [("m", utc(2021, 10, 31, 0, 30))]
    assert staging[("m", utc(2021, 10, 31, 0, 30))].kwh == 2.0


def test_spring_forward_nonexistent_invalid(tmp_path):
    rows = [
        ["2021-03-28 00:30:00", 1, "m"],
        ["2021-03-28 01:00:00", 1, "m"],
        ["2021-03-28 01:30:00", 1, "m"],
        ["2021-03-28 02:00:00", 1, "m"],
    ]
    f = readings_file(tmp_path / "sf.json", rows)
    good, bad, freason = parse_file(f)
    assert freason is None
    assert [i for i, _ in bad] == [1, 2]
    assert [g.instant for g in good] == [utc(2021, 3, 28, 0, 30), utc(2021, 3, 28, 1, 0)]
    assert good[1].local == datetime(2021, 3, 28, 2, 0)


def test_iso_offset_and_z(tmp_path):
    rows = [
        ["2021-06-01T01:00:00+01:00", 1, "m"],  # = 00:00Z, local 01:00 BST
        ["2021-01-01T00:30:00Z", 2, "m"],
        ["2021-06-01T00:30:00+00:00", 3, "m"],  # = local 01:30
        ["2021-06-02 00:00:00+05:30", 4, "m"],  # = 06-01 18:30Z, local 19:30
    ]
    f = readings_file(tmp_path / "iso.json", rows)
    good, bad, freason = parse_file(f)
    assert freason is None and bad == []
    assert [(g.instant, g.local) for g in good] == [
        (utc(2021, 6, 1, 0, 0), datetime(2021, 6, 1, 1, 0)),
        (utc(2021, 1, 1, 0, 30), datetime(2021, 1, 1, 0, 30)),
        (utc(2021, 6, 1, 0, 30), datetime(2021, 6, 1, 1, 30)),
        (utc(2021, 6, 1, 18, 30), datetime(2021, 6, 1, 19, 30)),
    ]


def test_naive_t_separator_and_iso_collapse_to_one_reading(tmp_path):
    rows = [
        ["2021-06-01 01:00:00", 1, "m"],
        ["2021-06-01T01:00:00", 2, "m"],
        ["2021-06-01T00:00:00Z", 3, "m"],
    ]
    staging = only_staging(tmp_path, rows)
    assert list(staging) == [("m", utc(2021, 6, 1, 0, 0))]
    assert staging[("m", utc(2021, 6, 1, 0, 0))].kwh == 3.0


def test_iso_offset_time_within_fall_back_is_unambiguous(tmp_path):
    rows = [
        ["2021-10-31T01:00:00+00:00", 5, "m"],  # the GMT 01:00
        ["2021-10-31 01:00:00", 6, "m"],  # first naive occurrence: BST
    ]
    staging = only_staging(tmp_path, rows)
    assert {k[1]: r.kwh for k, r in staging.items()} == {
        utc(2021, 10, 31, 1, 0): 5.0,
        utc(2021, 10, 31, 0, 0): 6.0,
    }


@pytest.mark.parametrize(
    "ts",
    [
        "2021-01-01 00:15:00",
        "2021-01-01 00:30:01",
        "2021-01-01 00:30",
        "2021-13-01 00:30:00",
        "2021-02-30 00:00:00",
        "2021-01-01 24:00:00",
        "01/01/2021 00:30:00",
        "2021-01-01T00:15:00Z",
        "2021-01-01T00:00:00+00:15",
        "",
    ],
)
def test_bad_timestamps_rejected(tmp_path, ts):
    f = readings_file(tmp_path / "t.json", [[ts, 1, "m"], ["2021-01-01 00:00:00", 1, "m"]])
    good, bad, freason = parse_file(f)
    assert freason is None
    assert [i for i, _ in bad] == [0]
    assert len(good) == 1


def test_non_string_timestamp_rejected(tmp_path):
    f = readings_file(tmp_path / "t.json", [[1609459200, 1, "m"], [None, 1, "m"]])
    good, bad, _ = parse_file(f)
    assert good == [] and [i for i, _ in bad] == [0, 1]


def test_other_timezone(tmp_path):
    f = readings_file(tmp_path / "t.json", [["2021-01-01 09:00:00", 1, "m"]])
    good, _, _ = parse_file(f, tz="Asia/Tokyo")
    assert good[0].instant == utc(2021, 1, 1, 0, 0)
    assert good[0].reading_date == date(2021, 1, 1)


# --------------------------------------------------------------------------
# parsing: values, columns, files
# --------------------------------------------------------------------------
def test_consumption_values(tmp_path):
    rows = [
        ["2021-01-01 00:00:00", "0.25", "m1"],  # numeric string
        ["2021-01-01 00:00:00", 1, "m2"],  # int
        ["2021-01-01 00:00:00", 0, "m3"],  # zero ok
        ["2021-01-01 00:00:00", "1e-3", "m4"],
        ["2021-01-01 00:00:00", -0.1, "m5"],  # negative
        ["2021-01-01 00:00:00", "abc", "m6"],
        ["2021-01-01 00:00:00", True, "m7"],  # booleans are not numbers
        ["2021-01-01 00:00:00", None, "m8"],
        ["2021-01-01 00:00:00", "NaN", "m9"],
        ["2021-01-01 00:00:00", "", "m10"],
        ["2021-01-01 00:00:00", [1], "m11"],
        ["2021-01-01 00:00:00", "-2", "m12"],
    ]
    f = readings_file(tmp_path / "v.json", rows)
    good, bad, freason = parse_file(f)
    assert freason is None
    assert {g.meterpoint_id: g.kwh for g in good} == {"m1": 0.25, "m2": 1.0, "m3": 0.0, "m4": 0.001}
    assert all(isinstance(g.kwh, float) for g in good)
    assert [i for i, _ in bad] == [4, 5, 6, 7, 8, 9, 10, 11]


def test_nan_and_infinity_literals_reject_rows_not_file(tmp_path):
    text = (
        '{"columns": ["interval_start", "consumption_delta", "meterpoint_id"], "data": ['
        '["2021-01-01 00:00:00", NaN, "m"], '
        '["2021-01-01 00:30:00", Infinity, "m"], '
        '["2021-01-01 01:00:00", -Infinity, "m"], '
        '["2021-01-01 01:30:00", 0.5, "m"]]}'
    )
    f = write_json(tmp_path / "nan.json", text)
    good, bad, freason = parse_file(f)
    assert freason is None
    assert [i for i, _ in bad] == [0, 1, 2]
    assert [(g.instant, g.kwh) for g in good] == [(utc(2021, 1, 1, 1, 30), 0.5)]


def test_meterpoint_id_validation(tmp_path):
    rows = [
        ["2021-01-01 00:00:00", 1, ""],
        ["2021-01-01 00:00:00", 1, None],
        ["2021-01-01 00:00:00", 1, "ok"],
    ]
    f = readings_file(tmp_path / "m.json", rows)
    good, bad, _ = parse_file(f)
    assert [g.meterpoint_id for g in good] == ["ok"]
    assert [i for i, _ in bad] == [0, 1]


def test_columns_in_another_order_and_extra_columns(tmp_path):
    cols = ["meterpoint_id", "note", "consumption_delta", "interval_start"]
    rows = [["m", "x", 0.7, "2021-01-01 00:30:00"]]
    f = readings_file(tmp_path / "o.json", rows, columns=cols)
    good, bad, freason = parse_file(f)
    assert freason is None and bad == []
    assert (good[0].meterpoint_id, good[0].kwh, good[0].instant) == ("m", 0.7, utc(2021, 1, 1, 0, 30))


def test_pretty_printed_file(tmp_path):
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"columns": COLS, "data": [["2021-01-01 00:00:00", 1, "m"]]}, indent=2))
    good, _bad, freason = parse_file(f)
    assert len(good) == 1 and freason is None


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        '{"columns": ["interval_start"',
        "[1, 2]",
        '"str"',
        json.dumps({"data": []}),
        json.dumps({"columns": COLS}),
        json.dumps({"columns": "interval_start", "data": []}),
        json.dumps({"columns": ["interval_start", 1, "meterpoint_id"], "data": []}),
        json.dumps({"columns": ["interval_start", "meterpoint_id"], "data": []}),
        json.dumps({"columns": COLS, "data": {"a": 1}}),
        json.dumps({"columns": COLS, "data": [["2021-01-01 00:00:00", 1, "m"], "row"]}),
        json.dumps({"columns": COLS, "data": [["2021-01-01 00:00:00", 1, "m"], None]}),
    ],
)
def test_file_level_rejections(tmp_path, content):
    f = write_json(tmp_path / "bad.json", content)
    good, bad, freason = parse_file(f)
    assert freason is not None
    assert good == [] and bad == []
    rows, files = expected_rejections([[delivery(f)]])
    assert rows == [] and len(files) == 1


def test_empty_data_is_fine(tmp_path):
    f = readings_file(tmp_path / "e.json", [])
    assert parse_file(f) == ([], [], None)


def test_load_deliveries_ignores_hidden_and_underscore(tmp_path):
    for n in ("a.json", "_tmp.json", ".b.json", "c.txt", "d.json"):
        (tmp_path / n).write_text("{}")
    os.utime(tmp_path / "a.json", (1234.5, 1234.5))
    ds = load_deliveries([tmp_path])
    assert [d.name for d in ds] == ["a.json", "d.json"]
    assert ds[0].mtime == 1234.5 and ds[0].path == tmp_path / "a.json"


# --------------------------------------------------------------------------
# latest wins
# --------------------------------------------------------------------------
TS = "2021-01-01 00:00:00"
KEY = ("m", utc(2021, 1, 1, 0, 0))


def test_latest_wins_across_batches(tmp_path):
    a = delivery(readings_file(tmp_path / "a.json", [[TS, 1, "m"]], mtime=3000))
    b = delivery(readings_file(tmp_path / "b.json", [[TS, 2, "m"]], mtime=1000))
    # the later-processed batch wins, whatever the mtimes and names
    assert expected_staging([[a], [b]])[KEY].kwh == 2.0
    assert expected_staging([[b], [a]])[KEY].kwh == 1.0
    # A then B then A again -> A
    assert expected_staging([[a], [b], [a]])[KEY].kwh == 1.0


def test_duplicate_delivery_counts_once(tmp_path):
    a = delivery(readings_file(tmp_path / "a.json", [[TS, 1, "m"], [TS, 1, "m"]]))
    b = delivery(readings_file(tmp_path / "b.json", [[TS, 1, "m"]]))
    staging = expected_staging([[a, b], [a]])
    assert len(staging) == 1
    t = expected_tables(staging, make_db(tmp_path / "d.db"))
    assert t[TOTAL_HH][0]["total_kwh"] == 1.0 and t[TOTAL_HH][0]["meterpoint_count"] == 1


def test_latest_wins_within_batch_by_mtime_then_name_then_row(tmp_path):
    # later mtime beats greater name
    z_old = delivery(readings_file(tmp_path / "z.json", [[TS, 1, "m"]], mtime=1000))
    a_new = delivery(readings_file(tmp_path / "a.json", [[TS, 2, "m"]], mtime=2000))
    assert expected_staging([[z_old, a_new]])[KEY].kwh == 2.0
    assert expected_staging([[a_new, z_old]])[KEY].kwh == 2.0
    # equal mtime: greater name wins
    x = delivery(readings_file(tmp_path / "x.json", [[TS, 3, "m"]], mtime=5000))
    y = delivery(readings_file(tmp_path / "y.json", [[TS, 4, "m"]], mtime=5000))
    assert expected_staging([[y, x]])[KEY].kwh == 4.0
    assert expected_staging([[x, y]])[KEY].kwh == 4.0
    # within one file: the later row wins
    r = delivery(
        readings_file(tmp_path / "r.json", [[TS, 5, "m"], [TS, 6, "m"], ["2021-01-01T00:00:00Z", 7, "m"]])
    )
    assert expected_staging([[r]])[KEY].kwh == 7.0


def test_rejected_rows_never_override(tmp_path):
    a = delivery(readings_file(tmp_path / "a.json", [[TS, 1, "m"]]))
    b = delivery(readings_file(tmp_path / "b.json", [[TS, -5, "m"], [TS, "x", "m"]]))
    bad_file = delivery(write_json(tmp_path / "c.json", "garbage"))
    assert expected_staging([[a], [b], [bad_file]])[KEY].kwh == 1.0


def test_backfill_keeps_other_readings(tmp_path):
    a = delivery(readings_file(tmp_path / "a.json", [["2021-02-01 00:00:00", 1, "m"]]))
    b = delivery(readings_file(tmp_path / "b.json", [["2021-01-01 00:00:00", 2, "m"]]))
    assert len(expected_staging([[a], [b]])) == 2


# --------------------------------------------------------------------------
# attribution
# --------------------------------------------------------------------------
PRODUCTS = [
    # display_name, is_variable, id, product_id  (id deliberately != product_id)
    ("Fixed", 0, 1, 10),
    ("Agile", 1, 2, 20),
    ("Agile", "true", 3, 21),  # another product_id with the same display name
    ("Tracker", "false", 4, 30),
]


def reading_at(tmp_path, local_ts: str, mp="m", kwh=1.0, name="r.json"):
    f = readings_file(tmp_path / name, [[local_ts, kwh, mp]])
    good, _, _ = parse_file(f)
    return good[0]


def test_point_in_time_attribution_on_switch_day(tmp_path):
    db = make_db(
        tmp_path / "d.db",
        agreements=[
            (1, "2021-01-01", "2021-06-10", 10, "m", "acc1"),
            (2, "2021-06-10", None, 20, "m", "acc2"),
        ],
        products=PRODUCTS,
        meterpoints=[("North", "m")],
    )
    dims = load_dimensions(db)
    # 2021-06-10 00:00 BST is 2021-06-09 23:00Z: the LOCAL date decides
    r = reading_at(tmp_path, "2021-06-10 00:00:00")
    assert r.instant == utc(2021, 6, 9, 23, 0)
    assert attribute(r, dims) == {
        "agreement_id": 2,
        "product_id": 20,
        "product_display_name": "Agile",
        "product_is_variable": True,
        "region": "North",
        "account_id": "acc2",
    }
    r = reading_at(tmp_path, "2021-06-09 23:30:00")
    a = attribute(r, dims)
    assert (a["agreement_id"], a["product_display_name"], a["product_is_variable"], a["account_id"]) == (
        1,
        "Fixed",
        False,
        "acc1",
    )
    # before the first agreement: nothing covers, region still known
    r = reading_at(tmp_path, "2020-12-31 23:30:00")
    assert attribute(r, dims) == {
        "agreement_id": None,
        "product_id": None,
        "product_display_name": None,
        "product_is_variable": None,
        "region": "North",
        "account_id": None,
    }


def test_zero_length_agreement_covers_nothing(tmp_path):
    db = make_db(
        tmp_path / "d.db",
        agreements=[(7, "2021-01-05", "2021-01-05", 10, "m", "acc")],
        products=PRODUCTS,
        meterpoints=[("South", "m")],
    )
    dims = load_dimensions(db)
    a = attribute(reading_at(tmp_path, "2021-01-05 12:00:00"), dims)
    assert a["agreement_id"] is None and a["product_display_name"] is None
    assert a["region"] == "South"
    t = expected_tables({}, db, as_of=date(2021, 1, 5))
    assert t[ACTIVE] == []


def test_overlapping_agreements(tmp_path):
    db = make_db(
        tmp_path / "d.db",
        agreements=[
            (1, "2021-01-01", None, 10, "m", "a"),
            (2, "2021-01-03", "2021-01-20", 20, "m", "a"),  # later valid_from wins
            (5, "2021-02-01", None, 30, "n", "b"),
            (4, "2021-02-01", None, 10, "n", "b"),  # same valid_from: greater id (5) wins
        ],
        products=PRODUCTS,
    )
    dims = load_dimensions(db)
    assert attribute(reading_at(tmp_path, "2021-01-02 00:00:00"), dims)["agreement_id"] == 1
    assert attribute(reading_at(tmp_path, "2021-01-03 00:00:00"), dims)["agreement_id"] == 2
    assert attribute(reading_at(tmp_path, "2021-01-20 00:00:00"), dims)["agreement_id"] == 1
    a = attribute(reading_at(tmp_path, "2021-02-01 00:00:00", mp="n"), dims)
    assert (a["agreement_id"], a["product_display_name"], a["region"]) == (5, "Tracker", None)


def test_missing_product_keeps_agreement(tmp_path):
    db = make_db(
        tmp_path / "d.db",
        agreements=[(9, "2021-01-01", None, 99, "m", "acc")],
        products=PRODUCTS,
        meterpoints=[("East", "m")],
    )
    a = attribute(reading_at(tmp_path, "2021-03-01 00:00:00"), load_dimensions(db))
    assert a == {
        "agreement_id": 9,
        "product_id": 99,
        "product_display_name": None,
        "product_is_variable": None,
        "region": "East",
        "account_id": "acc",
    }


def test_product_joins_on_product_id_not_id(tmp_path):
    # agreement.product_id = 2 matches product.id of "Agile" but no product_id
    db = make_db(
        tmp_path / "d.db",
        agreements=[(1, "2021-01-01", None, 2, "m", "acc")],
        products=PRODUCTS,
    )
    a = attribute(reading_at(tmp_path, "2021-03-01 00:00:00"), load_dimensions(db))
    assert a["product_id"] == 2 and a["product_display_name"] is None


def test_unparseable_agreement_dates_cover_nothing(tmp_path):
    db = make_db(
        tmp_path / "d.db",
        agreements=[
            (1, "not a date", None, 10, "m", "acc"),
            (2, "2021-01-01", "2021-02-31", 10, "m", "acc"),
            (3, None, None, 10, "m", "acc"),
        ],
        products=PRODUCTS,
    )
    a = attribute(reading_at(tmp_path, "2021-01-10 00:00:00"), load_dimensions(db))
    assert a["agreement_id"] is None
    assert expected_tables({}, db)[ACTIVE] == []


def test_db_opened_read_only(tmp_path):
    db = make_db(tmp_path / "d.db")
    os.chmod(db, 0o444)
    try:
        load_dimensions(db)
        assert db.read_bytes()  # untouched, readable
    finally:
        os.chmod(db, 0o644)


# --------------------------------------------------------------------------
# presentation tables
# --------------------------------------------------------------------------
def test_active_agreements(tmp_path):
    db = make_db(
        tmp_path / "d.db",
        agreements=[
            (1, "2020-01-01", None, 10, "m1", "a"),  # active
            (2, "2020-01-01", "2021-01-01", 20, "m2", "a"),  # ends on as_of: not active
            (3, "2021-01-01", None, 20, "m3", "a"),  # starts on as_of: not active
            (4, "2020-06-01", "2021-01-02", 21, "m4", "a"),  # active
            (5, "2020-06-01", "2021-01-02", 99, "m5", "a"),  # active, missing product
        ],
        products=PRODUCTS,
    )
    t = expected_tables({}, db)
    assert t[ACTIVE] == [
        {
            "agreement_id": 1,
            "meterpoint_id": "m1",
            "product_display_name": "Fixed",
            "product_is_variable": False,
        },
        {
            "agreement_id": 4,
            "meterpoint_id": "m4",
            "product_display_name": "Agile",
            "product_is_variable": True,
        },
        {"agreement_id": 5, "meterpoint_id": "m5", "product_display_name": None, "product_is_variable": None},
    ]
    assert [
        r["agreement_id"] for r in expected_tables({}, db, as_of=date(2021, 1, 1) + timedelta(days=1))[ACTIVE]
    ] == [1, 3]


def build_small_world(tmp_path):
    db = make_db(
        tmp_path / "d.db",
        agreements=[
            (1, "2021-01-01", None, 20, "m1", "a1"),  # Agile (product 20)
            (2, "2021-01-01", None, 21, "m2", "a2"),  # Agile (product 21)
            (3, "2021-01-01", "2021-01-02", 10, "m3", "a3"),  # Fixed, only 01-01
        ],
        products=PRODUCTS,
        meterpoints=[("N", "m1"), ("S", "m2")],
    )
    rows = [
        ["2021-01-01 00:00:00", 1.0, "m1"],
        ["2021-01-01 00:00:00", 2.0, "m2"],
        ["2021-01-01 00:00:00", 4.0, "m3"],
        ["2021-01-01 00:30:00", 0.5, "m1"],
        ["2021-01-02 00:00:00", 3.0, "m3"],  # no agreement
        ["2021-01-02 00:00:00", 1.5, "m4"],  # unknown meterpoint
    ]
    f = readings_file(tmp_path / "w.json", rows)
    staging = expected_staging([[delivery(f)]])
    return db, expected_tables(staging, db)


def test_presentation_tables(tmp_path):
    _db, t = build_small_world(tmp_path)
    assert len(t[STAGING]) == 6
    s = {(r["meterpoint_id"], r["interval_start"]): r for r in t[STAGING]}
    r = s[("m4", utc(2021, 1, 2, 0, 0))]
    assert r["region"] is None and r["agreement_id"] is None
    assert r["interval_start_local"] == datetime(2021, 1, 2) and r["reading_date"] == date(2021, 1, 2)

    assert t[TOTAL_HH] == [
        {
            "interval_start": utc(2021, 1, 1, 0, 0),
            "interval_start_local": datetime(2021, 1, 1, 0, 0),
            "meterpoint_count": 3,
            "total_kwh": 7.0,
        },
        {
            "interval_start": utc(2021, 1, 1, 0, 30),
            "interval_start_local": datetime(2021, 1, 1, 0, 30),
            "meterpoint_count": 1,
            "total_kwh": 0.5,
        },
        {
            "interval_start": utc(2021, 1, 2, 0, 0),
            "interval_start_local": datetime(2021, 1, 2, 0, 0),
            "meterpoint_count": 2,
            "total_kwh": 4.5,
        },
    ]
    assert t[PER_PRODUCT_DAY] == [
        {"product_display_name": None, "date": date(2021, 1, 2), "meterpoint_count": 2, "total_kwh": 4.5},
        {"product_display_name": "Agile", "date": date(2021, 1, 1), "meterpoint_count": 2, "total_kwh": 3.5},
        {"product_display_name": "Fixed", "date": date(2021, 1, 1), "meterpoint_count": 1, "total_kwh": 4.0},
    ]
    gold = {r["interval_start"]: r for r in t[GOLD_HH]}
    assert gold[utc(2021, 1, 1, 0, 0)]["avg_kwh"] == pytest.approx(7.0 / 3)
    assert gold[utc(2021, 1, 2, 0, 0)]["avg_kwh"] == pytest.approx(2.25)
    gp = {(r["product_display_name"], r["interval_start"]): r for r in t[GOLD_PRODUCT_HH]}
    assert set(gp) == {
        ("Agile", utc(2021, 1, 1, 0, 0)),
        ("Fixed", utc(2021, 1, 1, 0, 0)),
        ("Agile", utc(2021, 1, 1, 0, 30)),
        (None, utc(2021, 1, 2, 0, 0)),
    }
    agile = gp[("Agile", utc(2021, 1, 1, 0, 0))]
    assert (agile["meterpoint_count"], agile["total_kwh"], agile["avg_kwh"]) == (2, 3.0, 1.5)
    assert reconciliation_errors(t) == []


def test_reconciliation_on_bst_dates(tmp_path):
    # local date != UTC date for 00:xx BST readings
    rows = [["2021-06-02 00:00:00", 1.0, "m"], ["2021-06-01 23:30:00", 2.0, "m"]]
    f = readings_file(tmp_path / "b.json", rows)
    t = expected_tables(expected_staging([[delivery(f)]]), make_db(tmp_path / "d.db"))
    assert {r["date"]: r["total_kwh"] for r in t[PER_PRODUCT_DAY]} == {
        date(2021, 6, 1): 2.0,
        date(2021, 6, 2): 1.0,
    }
    assert reconciliation_errors(t) == []
    broken = dict(t)
    broken[PER_PRODUCT_DAY] = [dict(r, total_kwh=r["total_kwh"] + 1) for r in t[PER_PRODUCT_DAY]]
    errs = reconciliation_errors(broken)
    assert len(errs) == 2 and "2021-06-01" in errs[0]


# --------------------------------------------------------------------------
# assert_tables_match
# --------------------------------------------------------------------------
def spark_like(tables):
    """What collected Spark rows may look like: naive-UTC instants, extra
    columns, another row order, floats summed in another order."""
    out = {}
    for name, rows in tables.items():
        new = []
        for r in reversed(rows):
            r = dict(r, ingested_at=datetime(2030, 1, 1))
            if isinstance(r.get("interval_start"), datetime):
                r["interval_start"] = r["interval_start"].astimezone(UTC).replace(tzinfo=None)
            if isinstance(r.get("total_kwh"), float):
                r["total_kwh"] = r["total_kwh"] * (1 + 1e-13)
            new.append(r)
        out[name] = new
    return out


def test_assert_tables_match_accepts_equivalent(tmp_path):
    _, t = build_small_world(tmp_path)
    assert_tables_match(spark_like(t), t, TABLE_KEYS)
    assert_tables_match(t, t, TABLE_KEYS)
    assert reconciliation_errors(spark_like(t)) == []


def test_assert_tables_match_reports_differences(tmp_path):
    _, t = build_small_world(tmp_path)
    actual = spark_like(t)
    actual[TOTAL_HH] = actual[TOTAL_HH][1:]  # drop one row
    actual[GOLD_HH][0] = dict(actual[GOLD_HH][0], total_kwh=99.0)
    actual[PER_PRODUCT_DAY].append(
        {"product_display_name": "Ghost", "date": date(2021, 1, 1), "meterpoint_count": 1, "total_kwh": 1.0}
    )
    actual[ACTIVE] = []
    actual[STAGING][0] = dict(
        actual[STAGING][0], product_is_variable=1 if actual[STAGING][0]["product_is_variable"] else 0
    )
    del actual[GOLD_PRODUCT_HH]
    with pytest.raises(AssertionError) as e:
        assert_tables_match(actual, t, TABLE_KEYS)
    msg = str(e.value)
    assert f"{TOTAL_HH}: expected 3 rows, actual 2; 1 keys missing" in msg
    assert f"{GOLD_HH}: expected 3 rows, actual 3; 0 keys missing, 0 extra, 1 differing" in msg
    assert "total_kwh: expected" in msg and "99.0" in msg
    assert f"{PER_PRODUCT_DAY}: expected 3 rows, actual 4; 0 keys missing, 1 extra" in msg
    assert f"{GOLD_PRODUCT_HH}: table missing" in msg
    assert f"{STAGING}:" in msg  # 1/0 is not a BOOLEAN


def test_assert_tables_match_counts_duplicates(tmp_path):
    _, t = build_small_world(tmp_path)
    actual = {k: list(v) for k, v in t.items()}
    actual[TOTAL_HH] = actual[TOTAL_HH] + [actual[TOTAL_HH][0]]
    with pytest.raises(AssertionError, match="1 differing"):
        assert_tables_match(actual, t, TABLE_KEYS)
