"""Property-style fuzzing of `parse_readings` (plain Python, no Spark).

Good readings files, one-line and pretty-printed, are damaged at random (byte
flips, insertions, deletions, truncations, repeated slices) and rows are built
from random cells; for every input the parser must return, never raise, and
what it returns must hold together:

- a file-level error starts with a known code and comes with no rows;
- otherwise every row is either valid (`reason` None, a non-empty string
  meterpoint, a finite kWh >= 0, UTC and local microseconds on a half hour) or
  rejected with a reason starting with a known row code and no typed fields.

Every case is seeded (`random.Random(seed)`), so a failure names the seed that
reproduces it. The explicit cases at the end are inputs these properties caught
(each made `parse_readings` raise).
"""

from __future__ import annotations

import json
import math
import random
from datetime import date
from typing import Any

import pytest

from streaming.generator import COLUMNS, day_rows, local_interval_starts, reading_rng
from streaming.parsing import REQUIRED_COLUMNS, JsonNumber, ParsedFile, parse_readings

TZ = "Europe/London"
HALF_HOUR_US = 30 * 60 * 1_000_000
HOUR_US = 2 * HALF_HOUR_US
YEAR_1900_US = -2_208_988_800_000_000  # London has kept whole-hour offsets since 1847
FILE_CODES = {
    "empty_file",
    "not_utf8",
    "invalid_json",
    "not_an_object",
    "missing_key",
    "bad_columns",
    "missing_column",
    "bad_data",
    "bad_row",
}
ROW_CODES = {
    "wrong_width",
    "bad_meterpoint",
    "bad_interval_start",
    "not_half_hour",
    "nonexistent_local_time",
    "bad_consumption",
    "negative_consumption",
}
# a row holding a value no rule foresaw is rejected whole (never the file)
ALL_ROW_CODES = ROW_CODES | {"unreadable_row"}
CASES_PER_LAYOUT = 500
ROW_CASES = 300
JSONISH = b'0123456789.-+eE:TZ ,[]{}"nulltruefalseNaNInfinity\\'


# ---------------------------------------------------------------- inputs


def good_rows() -> list[list[Any]]:
    """A few days' rows of two meterpoints: winter, the fall-back day, ISO offsets, numeric strings."""
    rows: list[list[Any]] = []
    for mp in ("228e516936", "f5fc17597d"):
        rows.extend(day_rows(mp, date(2021, 1, 2), reading_rng(42, mp, date(2021, 1, 2)))[:6])
    fall_back = local_interval_starts(date(2021, 10, 31))[:6]  # 01:00 and 01:30 twice
    rows.extend([ts, 0.1 + i / 100, "600c4dfcb2"] for i, ts in enumerate(fall_back))
    rows.append(["2021-01-02T03:00:00Z", 0.2, "92002a5c9a"])
    rows.append(["2021-06-01T12:30:00+01:00", "0.25", "92002a5c9a"])
    rows.append(["2021-01-02 03:30:00", 0, "92002a5c9a"])
    return rows


def good_file(pretty: bool) -> bytes:
    doc = {"columns": COLUMNS, "data": good_rows()}
    return json.dumps(doc, indent=2 if pretty else None).encode()


def mutate(content: bytes, rng: random.Random) -> bytes:
    """1 to 4 random edits of the bytes; digit swaps keep the JSON valid and damage the values."""
    data = bytearray(content)
    digits = [i for i, b in enumerate(data) if 48 <= b <= 57]
    for _ in range(rng.randint(1, 4)):
        kind = rng.choice(("digit", "digit", "flip", "bit", "insert", "delete", "truncate", "repeat"))
        at = rng.randrange(len(data) + 1) if data else 0
        if kind == "digit" and digits:
            i = rng.choice(digits)
            if i < len(data) and 48 <= data[i] <= 57:
                data[i] = rng.choice(b"0123456789")
        elif kind == "flip" and data:
            data[min(at, len(data) - 1)] = rng.choice(JSONISH)
        elif kind == "bit" and data:
            data[min(at, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif kind == "insert":
            piece = bytes(rng.choice(JSONISH) for _ in range(rng.randint(1, 6)))
            if rng.random() < 0.2:
                piece = bytes(rng.randrange(256) for _ in range(rng.randint(1, 3)))
            data[at:at] = piece
        elif kind == "delete":
            del data[at : at + rng.randint(1, 12)]
        elif kind == "truncate":
            del data[at:]
        elif kind == "repeat":
            end = min(len(data), at + rng.randint(1, 40))
            data[end:end] = data[at:end]
    return bytes(data)


TIMESTAMPS: list[Any] = [
    "2021-01-02 00:00:00",
    "2021-01-02 00:30:00",
    "2021-01-02 00:15:00",
    "2021-01-02 00:30:01",
    "2021-01-02 00:30:00.000",
    "2021-01-02T00:30:00Z",
    "2021-01-02T00:30:00+05:30",
    "2021-01-02T00:30:00+05:45",
    "2021-01-02T00:30:00-0100",
    "2021-01-02T00:30:00+24:00",
    "9999-12-31T23:30:00-05:00",
    "0001-01-01T00:00:00+01:00",
    "2021-03-28 01:00:00",
    "2021-03-28 01:30:00",
    "2021-10-31 01:00:00",
    "2021-10-31 01:30:00",
    "2021-02-29 00:00:00",
    "2021-13-01 00:00:00",
    "2021-01-02",
    "",
    " 2021-01-02 00:00:00 ",
    "not a time",
    None,
    True,
    0,
    1609545600,
    [],
    {},
]
CONSUMPTIONS: list[Any] = [
    0,
    0.0,
    -0.0,
    0.186,
    12,
    1e308,
    -0.5,
    "0.25",
    " 0.25 ",
    "1e3",
    "-1",
    "abc",
    "",
    "NaN",
    "inf",
    None,
    True,
    False,
    [0.1],
    {"kwh": 0.1},
    float("nan"),
    float("inf"),
    float("-inf"),
]
METERPOINTS: list[Any] = ["228e516936", "A", " ", "", None, 42, True, "é", "x" * 200, ["A"], {"id": "A"}]


def random_file(rng: random.Random) -> bytes:
    """Up to 12 rows of random cells, columns in a random order, some rows short or long."""
    columns = list(COLUMNS)
    rng.shuffle(columns)
    if rng.random() < 0.2:
        columns.append("quality")
    rows = []
    for _ in range(rng.randint(0, 12)):
        cells = {
            "interval_start": rng.choice(TIMESTAMPS),
            "consumption_delta": rng.choice(CONSUMPTIONS),
            "meterpoint_id": rng.choice(METERPOINTS),
            "quality": "A",
        }
        row = [cells[c] for c in columns]
        if rng.random() < 0.1:
            row = row[: rng.randrange(len(row))]
        elif rng.random() < 0.05:
            row.append("extra")
        rows.append(row)
    return json.dumps({"columns": columns, "data": rows}, indent=rng.choice((None, 2))).encode()


# ---------------------------------------------------------------- the properties


def code(reason: str) -> str:
    return reason.split(":", 1)[0]


def check(parsed: ParsedFile) -> None:
    """The properties every result of `parse_readings` must have."""
    n = len(parsed.reason)
    columns_per_row = [
        parsed.row_index,
        parsed.values,
        parsed.row_json,
        parsed.meterpoint_id,
        parsed.interval_start_us,
        parsed.interval_start_local_us,
        parsed.consumption_kwh,
    ]
    assert [len(c) for c in columns_per_row] == [n] * len(columns_per_row)
    if parsed.error is not None:
        assert code(parsed.error) in FILE_CODES and ": " in parsed.error, parsed.error
        assert n == 0 and parsed.good_rows == 0
        return
    assert parsed.columns is not None and set(REQUIRED_COLUMNS) <= set(parsed.columns)
    assert parsed.row_index == list(range(n))
    values = parsed.values  # rebuilt from the flat list on each access
    for i in range(n):
        assert [name for name, _ in values[i]] == parsed.columns
        assert all(v is None or type(v) is str for _, v in values[i])
        assert isinstance(json.loads(parsed.row_json[i]), list)
        reason = parsed.reason[i]
        mp, kwh = parsed.meterpoint_id[i], parsed.consumption_kwh[i]
        utc, local = parsed.interval_start_us[i], parsed.interval_start_local_us[i]
        if reason is not None:
            assert code(reason) in ALL_ROW_CODES and ": " in reason, reason
            assert (mp, kwh, utc, local) == (None, None, None, None)
            continue
        assert isinstance(mp, str) and not isinstance(mp, JsonNumber) and mp.strip(), mp
        assert type(kwh) is float and math.isfinite(kwh) and kwh >= 0, kwh
        assert type(utc) is int and type(local) is int
        assert local % HALF_HOUR_US == 0, local
        if utc >= YEAR_1900_US:
            assert utc % HALF_HOUR_US == 0, utc
            assert local - utc in (0, HOUR_US, 2 * HOUR_US), (utc, local)
    assert parsed.good_rows == sum(r is None for r in parsed.reason)


def parse_and_check(content: bytes, seed: int) -> ParsedFile:
    try:
        parsed = parse_readings(content, TZ)
    except Exception as exc:  # the property: never raise
        pytest.fail(
            f"seed {seed}: parse_readings raised {type(exc).__name__}: {exc}\ninput: {content[:600]!r}"
        )
    try:
        check(parsed)
    except AssertionError as exc:
        raise AssertionError(f"seed {seed}: {exc}\ninput: {content[:600]!r}") from exc
    return parsed


# ---------------------------------------------------------------- the fuzz tests


def test_the_good_files_parse_without_a_rejected_row() -> None:
    for pretty in (False, True):
        parsed = parse_and_check(good_file(pretty), -1)
        assert parsed.error is None and parsed.good_rows == len(good_rows())


@pytest.mark.parametrize("pretty", [False, True], ids=["one_line", "pretty"])
def test_damaged_files_never_raise_and_every_row_is_valid_or_has_a_known_reason(pretty: bool) -> None:
    base = good_file(pretty)
    outcomes = {"file_error": 0, "rows_rejected": 0, "all_good": 0}
    for seed in range(CASES_PER_LAYOUT):
        content = mutate(base, random.Random(seed * 2 + pretty))
        parsed = parse_and_check(content, seed)
        if parsed.error is not None:
            outcomes["file_error"] += 1
        elif parsed.good_rows < len(parsed.reason):
            outcomes["rows_rejected"] += 1
        else:
            outcomes["all_good"] += 1
    # the damage reaches both the file level and the row level
    assert outcomes["file_error"] > 0 and outcomes["rows_rejected"] > 0, outcomes


def test_truncation_at_every_position_is_a_file_error() -> None:
    base = good_file(False)
    for cut in range(len(base)):
        parsed = parse_and_check(base[:cut], cut)
        assert parsed.error is not None, f"a file cut at byte {cut} was accepted"


def test_random_rows_never_raise_and_every_row_is_valid_or_has_a_known_reason() -> None:
    rng = random.Random(20210102)
    codes: set[str] = set()
    for case in range(ROW_CASES):
        parsed = parse_and_check(random_file(random.Random(rng.getrandbits(32))), case)
        codes |= {code(r) for r in parsed.reason if r is not None}
    assert codes == ROW_CODES  # every row rule was exercised


def test_row_codes_are_the_contract_rules_of_the_expectations() -> None:
    """Every row code maps to an expectation, so `fail`/`drop` in conf/ applies to it."""
    from streaming.expectations import CONTRACT_RULES

    assert {c for codes in CONTRACT_RULES.values() for c in codes} == ALL_ROW_CODES


# ---------------------------------------------------------------- inputs the properties caught


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    ("row_text", "expected_code"),
    [
        ('["2021-10-31 01:00:00", 0.1, ["228e516936"]]', "bad_meterpoint"),
        ('["2021-10-31 01:30:00", 0.1, {"id": "228e516936"}]', "bad_meterpoint"),
        ('["9999-12-31 23:30:00-05:00", 0.1, "228e516936"]', "bad_interval_start"),
        ('["0001-01-01T00:00:00+05:00", 0.1, "228e516936"]', "bad_interval_start"),
        (f'["2021-01-02 00:00:00", {nested(500)}, "228e516936"]', "bad_consumption"),
    ],
    ids=[
        "list_meterpoint_on_fall_back_time",
        "object_meterpoint_on_fall_back_time",
        "offset_instant_after_year_9999",
        "offset_instant_before_year_1",
        "value_nested_500_deep",
    ],
)
def test_row_that_made_the_parser_raise_is_rejected_instead(row_text: str, expected_code: str) -> None:
    content = (
        '{"columns": ["interval_start", "consumption_delta", "meterpoint_id"], "data": [' + row_text + "]}"
    )
    parsed = parse_and_check(content.encode(), 0)
    if parsed.error is not None:  # a nesting limit may reject the whole file instead
        assert expected_code == "bad_consumption" and code(parsed.error) == "invalid_json", parsed.error
        return
    assert [code(r) if r else None for r in parsed.reason] == [expected_code]


def test_the_executors_arrow_records_hold_what_parse_readings_returned() -> None:
    """`source._parse_batch` builds its Arrow columns from flat lists (raw_values
    from one list of values a column each); over damaged files and random rows
    (short and long ones among them; rows the parser raised on are the next
    test's) each file record and row record must carry exactly what
    `parse_readings` returned for its file."""
    import pyarrow as pa

    from streaming.source import _parse_batch

    rng = random.Random(20211031)
    contents = [mutate(good_file(bool(i % 2)), random.Random(i)) for i in range(60)]
    contents += [random_file(random.Random(rng.getrandbits(32))) for _ in range(60)]
    contents += [b"", good_file(False)]
    names = [f"file:/in/f{i}.json" for i in range(len(contents))]
    batch = pa.RecordBatch.from_arrays(
        [
            pa.array(names),
            pa.array([1_000 * i for i in range(len(contents))], pa.timestamp("us")),
            pa.array(contents, pa.binary()),
        ],
        names=["path", "modificationTime", "content"],
    )
    records = _parse_batch(batch, TZ).to_pylist()
    expected: list[dict[str, Any]] = []
    for name, content in zip(names, contents, strict=True):
        parsed = parse_readings(content, TZ)
        expected.append(
            {"kind": "file", "source_file": name, "columns": parsed.columns, "file_error": parsed.error}
        )
        for i in range(len(parsed.row_index)):
            expected.append(
                {
                    "kind": "row",
                    "source_file": name,
                    "row_index": parsed.row_index[i],
                    "raw_values": parsed.values[i],
                    "row_json": parsed.row_json[i],
                    "meterpoint_id": parsed.meterpoint_id[i],
                    "interval_start_us": parsed.interval_start_us[i],
                    "consumption_kwh": parsed.consumption_kwh[i],
                    "reason": parsed.reason[i],
                }
            )
    assert len(records) == len(expected)
    for got, want in zip(records, expected, strict=True):
        assert {k: got[k] for k in want} == want
        if want["kind"] == "file":
            assert got["raw_values"] is None and got["row_index"] is None
        else:
            assert got["columns"] is None and got["file_error"] is None
    kinds = {r["kind"] for r in records}
    assert kinds == {"file", "row"}
    # short and long rows were among them: a map still holds one value per column
    widths = {len(r["raw_values"]) == len(json.loads(r["row_json"])) for r in records if r["kind"] == "row"}
    assert widths == {True, False}


def test_a_row_the_parser_raised_on_keeps_the_maps_of_the_rows_after_it_aligned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A row whose parsing raises part-way (after its values were appended) is
    rejected whole by `_reject_row`, which must cut the flat list of values back
    to where the row began: the maps of that row and of every row after it,
    short and long rows among them, hold their own values."""
    import pyarrow as pa

    from streaming import parsing
    from streaming.source import _parse_batch

    real = parsing.parse_consumption

    def raising(value: Any) -> Any:
        if value == "7.77":
            raise ValueError("a value no rule foresaw")
        return real(value)

    monkeypatch.setattr(parsing, "parse_consumption", raising)
    content = json.dumps(
        {
            "columns": ["interval_start", "consumption_delta", "meterpoint_id", "note"],
            "data": [
                ["2021-01-01 00:00:00", 1.5, "A", "x"],
                ["2021-01-01 00:30:00", 7.77, "A", "y"],
                ["2021-01-01 01:00:00", 2, "A"],
                ["2021-01-01 01:30:00", 3, "A", "z", "extra"],
                ["2021-01-01 02:00:00", 7.77, "B", None],
                ["2021-01-01 02:30:00", 0.5, "B", "w"],
            ],
        }
    ).encode()
    batch = pa.RecordBatch.from_arrays(
        [pa.array(["f.json"]), pa.array([0], pa.timestamp("us")), pa.array([content], pa.binary())],
        names=["path", "modificationTime", "content"],
    )
    rows = [r for r in _parse_batch(batch, TZ).to_pylist() if r["kind"] == "row"]
    names = ("interval_start", "consumption_delta", "meterpoint_id", "note")
    assert [r["raw_values"] for r in rows] == [
        list(zip(names, values, strict=True))
        for values in (
            ("2021-01-01 00:00:00", "1.5", "A", "x"),
            ("2021-01-01 00:30:00", "7.77", "A", "y"),
            ("2021-01-01 01:00:00", "2", "A", None),
            ("2021-01-01 01:30:00", "3", "A", "z"),
            ("2021-01-01 02:00:00", "7.77", "B", None),
            ("2021-01-01 02:30:00", "0.5", "B", "w"),
        )
    ]
    assert [code(r["reason"]) if r["reason"] else None for r in rows] == [
        None,
        "unreadable_row",
        "wrong_width",
        "wrong_width",
        "unreadable_row",
        None,
    ]
    assert [r["row_index"] for r in rows] == list(range(6))
    assert [r["consumption_kwh"] for r in rows] == [1.5, None, None, None, None, 0.5]
