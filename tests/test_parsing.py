"""The reading rules of the contract, one file at a time, in plain Python (no Spark)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from streaming.parsing import LocalTime, ParsedFile, parse_interval_start, parse_readings

TZ = "Europe/London"
COLUMNS = ["interval_start", "consumption_delta", "meterpoint_id"]
EPOCH = datetime(1970, 1, 1)


# ---------------------------------------------------------------- helpers


def readings_file(
    rows: list[list[Any]], columns: list[str] | None = None, indent: int | None = None
) -> bytes:
    """A readings file's bytes: {"columns": [...], "data": rows}."""
    return json.dumps({"columns": columns or COLUMNS, "data": rows}, indent=indent).encode()


def parse(rows: list[list[Any]], columns: list[str] | None = None) -> ParsedFile:
    parsed = parse_readings(readings_file(rows, columns), TZ)
    assert parsed.error is None, parsed.error
    return parsed


def instant(us: int | None) -> datetime | None:
    """UTC microseconds as an aware datetime."""
    return None if us is None else datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def local(us: int | None) -> datetime | None:
    """Wall-clock microseconds as a naive datetime."""
    return None if us is None else EPOCH + timedelta(microseconds=us)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def good(parsed: ParsedFile) -> list[tuple[str | None, datetime | None, float | None]]:
    """(meterpoint_id, instant, kWh) of the rows that passed, in file order."""
    return [
        (parsed.meterpoint_id[i], instant(parsed.interval_start_us[i]), parsed.consumption_kwh[i])
        for i, reason in enumerate(parsed.reason)
        if reason is None
    ]


def reasons(parsed: ParsedFile) -> list[str | None]:
    return list(parsed.reason)


def half_hours(day: date) -> list[str]:
    """Naive local interval starts of a local day as a meter writes them (48 wall-clock slots)."""
    start = datetime(day.year, day.month, day.day)
    return [(start + timedelta(minutes=30 * i)).strftime("%Y-%m-%d %H:%M:%S") for i in range(48)]


def fall_back_wall_clock() -> list[str]:
    """2021-10-31 in Europe/London as a meter writes it: 01:00 and 01:30 appear twice."""
    day = half_hours(date(2021, 10, 31))
    return [*day[:4], "2021-10-31 01:00:00", "2021-10-31 01:30:00", *day[4:]]


# ---------------------------------------------------------------- columns


def test_columns_are_matched_by_name_in_any_order() -> None:
    in_order = parse([["2021-01-01 00:30:00", 0.186, "0432df65f7"]])
    reordered = parse(
        [["0432df65f7", "2021-01-01 00:30:00", 0.186]],
        columns=["meterpoint_id", "interval_start", "consumption_delta"],
    )
    shuffled = parse(
        [[0.186, "0432df65f7", "2021-01-01 00:30:00"]],
        columns=["consumption_delta", "meterpoint_id", "interval_start"],
    )
    expected = [("0432df65f7", utc(2021, 1, 1, 0, 30), 0.186)]
    assert good(in_order) == good(reordered) == good(shuffled) == expected


def test_extra_columns_are_kept_in_values_as_delivered() -> None:
    parsed = parse(
        [["A", "2021-01-01 00:00:00", 0.5, "estimated", 3]],
        columns=["meterpoint_id", "interval_start", "consumption_delta", "quality", "channel"],
    )
    assert parsed.columns == ["meterpoint_id", "interval_start", "consumption_delta", "quality", "channel"]
    assert dict(parsed.values[0]) == {
        "meterpoint_id": "A",
        "interval_start": "2021-01-01 00:00:00",
        "consumption_delta": "0.5",
        "quality": "estimated",
        "channel": "3",
    }
    assert good(parsed) == [("A", utc(2021, 1, 1, 0, 0), 0.5)]


def test_raw_values_keep_the_number_text_as_delivered() -> None:
    content = (
        b'{"columns": ["interval_start", "consumption_delta", "meterpoint_id"],'
        b' "data": [["2021-01-01 00:00:00", 0.10, "A"], ["2021-01-01 00:30:00", 1e-1, "A"]]}'
    )
    parsed = parse_readings(content, TZ)
    assert [dict(v)["consumption_delta"] for v in parsed.values] == ["0.10", "1e-1"]
    assert parsed.consumption_kwh == [0.1, 0.1]


def test_numeric_strings_are_accepted_as_consumption() -> None:
    parsed = parse(
        [
            ["2021-01-01 00:00:00", "0.25", "A"],
            ["2021-01-01 00:30:00", " 1.5 ", "A"],
            ["2021-01-01 01:00:00", "2e-1", "A"],
            ["2021-01-01 01:30:00", "0", "A"],
        ]
    )
    assert reasons(parsed) == [None, None, None, None]
    assert parsed.consumption_kwh == [0.25, 1.5, 0.2, 0.0]


def test_one_line_and_pretty_printed_files_parse_identically() -> None:
    rows = [
        ["2021-01-01 00:00:00", 0.186, "0432df65f7"],
        ["2021-01-01 00:30:00", "0.2", "0432df65f7"],
        ["2021-01-01 00:45:00", 0.3, "0432df65f7"],
        ["2021-10-31 01:00:00", 0.1, "0432df65f7"],
        ["2021-10-31 01:00:00", 0.2, "0432df65f7"],
    ]
    one_line = parse_readings(readings_file(rows), TZ)
    pretty = parse_readings(readings_file(rows, indent=2), TZ)
    assert b"\n" in readings_file(rows, indent=2)
    assert one_line == pretty
    assert one_line.good_rows == 4


# ---------------------------------------------------------------- autumn fall-back


def test_fall_back_day_keeps_both_one_oclock_readings_as_distinct_instants() -> None:
    wall = fall_back_wall_clock()
    parsed = parse([[ts, 0.1, "A"] for ts in wall])
    assert len(wall) == 50
    assert reasons(parsed) == [None] * 50
    instants = [instant(us) for us in parsed.interval_start_us]
    assert len(set(instants)) == 50
    # 50 consecutive half hours from 2021-10-30 23:00Z (local midnight, BST)
    assert instants == [utc(2021, 10, 30, 23, 0) + timedelta(minutes=30 * i) for i in range(50)]
    one_oclock = [instants[i] for i, ts in enumerate(wall) if ts == "2021-10-31 01:00:00"]
    half_past_one = [instants[i] for i, ts in enumerate(wall) if ts == "2021-10-31 01:30:00"]
    assert one_oclock == [utc(2021, 10, 31, 0, 0), utc(2021, 10, 31, 1, 0)]  # BST, then GMT
    assert half_past_one == [utc(2021, 10, 31, 0, 30), utc(2021, 10, 31, 1, 30)]


def test_fall_back_repeated_wall_clock_keeps_its_local_time() -> None:
    parsed = parse([["2021-10-31 01:00:00", 0.1, "A"], ["2021-10-31 01:00:00", 0.2, "A"]])
    assert [local(us) for us in parsed.interval_start_local_us] == [datetime(2021, 10, 31, 1, 0)] * 2
    assert [instant(us) for us in parsed.interval_start_us] == [
        utc(2021, 10, 31, 0, 0),
        utc(2021, 10, 31, 1, 0),
    ]


def test_fall_back_occurrences_are_counted_per_meterpoint_when_interleaved() -> None:
    parsed = parse(
        [
            ["2021-10-31 01:00:00", 0.1, "A"],
            ["2021-10-31 01:00:00", 0.2, "B"],
            ["2021-10-31 01:30:00", 0.3, "A"],
            ["2021-10-31 01:00:00", 0.4, "A"],
            ["2021-10-31 01:30:00", 0.5, "B"],
            ["2021-10-31 01:00:00", 0.6, "B"],
            ["2021-10-31 01:30:00", 0.7, "A"],
            ["2021-10-31 01:30:00", 0.8, "B"],
        ]
    )
    assert good(parsed) == [
        ("A", utc(2021, 10, 31, 0, 0), 0.1),
        ("B", utc(2021, 10, 31, 0, 0), 0.2),
        ("A", utc(2021, 10, 31, 0, 30), 0.3),
        ("A", utc(2021, 10, 31, 1, 0), 0.4),
        ("B", utc(2021, 10, 31, 0, 30), 0.5),
        ("B", utc(2021, 10, 31, 1, 0), 0.6),
        ("A", utc(2021, 10, 31, 1, 30), 0.7),
        ("B", utc(2021, 10, 31, 1, 30), 0.8),
    ]


def test_fall_back_first_occurrence_in_a_new_file_is_bst_again() -> None:
    first = parse([["2021-10-31 01:00:00", 0.1, "A"]])
    second = parse([["2021-10-31 01:00:00", 0.1, "A"]])
    assert (
        instant(first.interval_start_us[0]) == instant(second.interval_start_us[0]) == utc(2021, 10, 31, 0, 0)
    )


def test_parse_interval_start_reports_both_instants_of_an_ambiguous_time() -> None:
    parsed = parse_interval_start("2021-10-31 01:30:00", TZ)
    assert isinstance(parsed, LocalTime)
    assert instant(parsed.utc_us) == utc(2021, 10, 31, 0, 30)
    assert instant(parsed.later_utc_us) == utc(2021, 10, 31, 1, 30)
    assert local(parsed.local_us) == datetime(2021, 10, 31, 1, 30)


# ---------------------------------------------------------------- spring forward


def test_spring_forward_day_rejects_the_missing_hour() -> None:
    wall = half_hours(date(2021, 3, 28))
    parsed = parse([[ts, 0.1, "A"] for ts in wall])
    rejected = {wall[i]: r for i, r in enumerate(parsed.reason) if r is not None}
    assert parsed.good_rows == 46
    assert sorted(rejected) == ["2021-03-28 01:00:00", "2021-03-28 01:30:00"]
    assert all(r.startswith("nonexistent_local_time") for r in rejected.values())
    instants = [i for _, i, _ in good(parsed)]
    assert len(set(instants)) == 46
    assert instants[:3] == [utc(2021, 3, 28, 0, 0), utc(2021, 3, 28, 0, 30), utc(2021, 3, 28, 1, 0)]
    assert local(parsed.interval_start_local_us[4]) == datetime(2021, 3, 28, 2, 0)


def test_parse_interval_start_names_a_nonexistent_local_time() -> None:
    parsed = parse_interval_start("2021-03-28 01:30:00", TZ)
    assert isinstance(parsed, str)
    assert parsed.startswith("nonexistent_local_time")


# ---------------------------------------------------------------- ISO offsets


@pytest.mark.parametrize(
    ("text", "expected_instant", "expected_local"),
    [
        ("2021-01-01T00:30:00Z", utc(2021, 1, 1, 0, 30), datetime(2021, 1, 1, 0, 30)),
        ("2021-01-01T00:30:00z", utc(2021, 1, 1, 0, 30), datetime(2021, 1, 1, 0, 30)),
        ("2021-01-01T01:30:00+01:00", utc(2021, 1, 1, 0, 30), datetime(2021, 1, 1, 0, 30)),
        ("2021-01-01T00:00:00-0500", utc(2021, 1, 1, 5, 0), datetime(2021, 1, 1, 5, 0)),
        ("2021-07-01T00:00:00Z", utc(2021, 7, 1, 0, 0), datetime(2021, 7, 1, 1, 0)),  # BST
        ("2021-07-01 00:30:00+01:00", utc(2021, 6, 30, 23, 30), datetime(2021, 7, 1, 0, 30)),
        ("2021-10-31T01:00:00Z", utc(2021, 10, 31, 1, 0), datetime(2021, 10, 31, 1, 0)),  # GMT side
    ],
)
def test_iso_timestamp_with_offset_or_z_is_the_instant_it_names(
    text: str, expected_instant: datetime, expected_local: datetime
) -> None:
    parsed = parse_interval_start(text, TZ)
    assert isinstance(parsed, LocalTime), parsed
    assert instant(parsed.utc_us) == expected_instant
    assert local(parsed.local_us) == expected_local
    assert parsed.later_utc_us is None


def test_iso_timestamps_in_a_file_are_not_fall_back_occurrences() -> None:
    parsed = parse(
        [
            ["2021-10-31T00:00:00Z", 0.1, "A"],
            ["2021-10-31T01:00:00+00:00", 0.2, "A"],
            ["2021-10-31 01:00:00", 0.3, "A"],
        ]
    )
    assert good(parsed) == [
        ("A", utc(2021, 10, 31, 0, 0), 0.1),
        ("A", utc(2021, 10, 31, 1, 0), 0.2),
        ("A", utc(2021, 10, 31, 0, 0), 0.3),  # the first naive 01:00 of the file: BST
    ]


# ---------------------------------------------------------------- half-hour rule


@pytest.mark.parametrize(
    "text",
    [
        "2021-01-01 00:15:00",
        "2021-01-01 00:30:01",
        "2021-01-01 00:29:59",
        "2021-01-01 00:30:00.5",
        "2021-01-01T00:15:00Z",
        "2021-01-01T00:00:00+05:45",  # 18:15Z
    ],
)
def test_interval_start_not_on_the_half_hour_is_rejected(text: str) -> None:
    parsed = parse([[text, 0.1, "A"]])
    assert parsed.good_rows == 0
    assert parsed.reason[0] is not None and parsed.reason[0].startswith("not_half_hour")


@pytest.mark.parametrize(
    "value", ["2021-02-30 00:00:00", "yesterday", "", "2021-01-01", "01/01/2021 00:00:00", 1609459200, None]
)
def test_interval_start_that_is_not_a_timestamp_is_rejected(value: Any) -> None:
    parsed = parse([[value, 0.1, "A"]])
    assert parsed.good_rows == 0
    assert parsed.reason[0] is not None and parsed.reason[0].startswith("bad_interval_start")


def test_zero_fraction_of_a_second_is_still_on_the_half_hour() -> None:
    parsed = parse([["2021-01-01 00:30:00.000", 0.1, "A"]])
    assert good(parsed) == [("A", utc(2021, 1, 1, 0, 30), 0.1)]


# ---------------------------------------------------------------- consumption


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_or_infinity_literal_rejects_the_row_not_the_file(literal: str) -> None:
    content = (
        '{"columns": ["interval_start", "consumption_delta", "meterpoint_id"], "data": ['
        f'["2021-01-01 00:00:00", 0.1, "A"], ["2021-01-01 00:30:00", {literal}, "A"],'
        ' ["2021-01-01 01:00:00", 0.3, "A"]]}'
    ).encode()
    parsed = parse_readings(content, TZ)
    assert parsed.error is None
    assert good(parsed) == [("A", utc(2021, 1, 1, 0, 0), 0.1), ("A", utc(2021, 1, 1, 1, 0), 0.3)]
    assert parsed.reason[1] is not None and "not finite" in parsed.reason[1]
    assert dict(parsed.values[1])["consumption_delta"] == literal


@pytest.mark.parametrize("text", ["NaN", "nan", "inf", "-Infinity", "1e999"])
def test_non_finite_numeric_string_is_rejected(text: str) -> None:
    parsed = parse([["2021-01-01 00:00:00", text, "A"]])
    assert parsed.good_rows == 0
    assert parsed.consumption_kwh == [None]


@pytest.mark.parametrize(
    ("value", "reason_prefix"),
    [
        (-0.1, "negative_consumption"),
        ("-2", "negative_consumption"),
        (True, "bad_consumption"),
        (False, "bad_consumption"),
        (None, "bad_consumption"),
        ("abc", "bad_consumption"),
        ("", "bad_consumption"),
        ("0.1 kWh", "bad_consumption"),
        ([0.1], "bad_consumption"),
        ({"kwh": 0.1}, "bad_consumption"),
    ],
)
def test_consumption_that_is_not_a_non_negative_number_is_rejected(value: Any, reason_prefix: str) -> None:
    parsed = parse([["2021-01-01 00:00:00", value, "A"], ["2021-01-01 00:30:00", 0.2, "A"]])
    assert parsed.reason[0] is not None and parsed.reason[0].startswith(reason_prefix), parsed.reason[0]
    assert parsed.consumption_kwh[0] is None and parsed.meterpoint_id[0] is None
    assert good(parsed) == [("A", utc(2021, 1, 1, 0, 30), 0.2)]


def test_zero_and_negative_zero_consumption_are_valid_zero() -> None:
    parsed = parse([["2021-01-01 00:00:00", 0, "A"], ["2021-01-01 00:30:00", -0.0, "A"]])
    assert reasons(parsed) == [None, None]
    assert parsed.consumption_kwh == [0.0, 0.0]
    assert str(parsed.consumption_kwh[1]) == "0.0"


# ---------------------------------------------------------------- meterpoint


@pytest.mark.parametrize("value", [None, "", "   ", 12345, True, ["A"]])
def test_meterpoint_that_is_not_a_non_empty_string_is_rejected(value: Any) -> None:
    parsed = parse([["2021-01-01 00:00:00", 0.1, value]])
    assert parsed.good_rows == 0
    assert parsed.reason[0] is not None and parsed.reason[0].startswith("bad_meterpoint")


# ---------------------------------------------------------------- file-level errors


@pytest.mark.parametrize(
    ("content", "reason_prefix"),
    [
        (b"", "empty_file"),
        (b"  \n\t ", "empty_file"),
        (b"{not json", "invalid_json"),
        (
            b'{"columns": ["interval_start", "consumption_delta", "meterpoint_id"], "data": [["2021-01-01',
            "invalid_json",
        ),
        (b"\xff\xfe\x00garbage", "not_utf8"),
        (b"[]", "not_an_object"),
        (b'[{"columns": ["interval_start"], "data": []}]', "not_an_object"),
        (b"null", "not_an_object"),
        (b'"a string"', "not_an_object"),
        (b"42", "not_an_object"),
        (b'{"data": []}', "missing_key"),
        (b'{"columns": ["interval_start", "consumption_delta", "meterpoint_id"]}', "missing_key"),
        (b'{"columns": "interval_start,consumption_delta,meterpoint_id", "data": []}', "bad_columns"),
        (
            b'{"columns": ["interval_start", "consumption_delta", "meterpoint_id", null], "data": []}',
            "bad_columns",
        ),
        (
            b'{"columns": ["interval_start", "consumption_delta", "meterpoint_id", 7],'
            b' "data": [["2021-01-01 00:00:00", 0.1, "A", 1]]}',
            "bad_columns",
        ),
        (b'{"columns": ["interval_start", "meterpoint_id"], "data": []}', "missing_column"),
        (
            b'{"columns": ["interval_start", "consumption_delta", "meterpoint_id"], "data": {"a": 1}}',
            "bad_data",
        ),
        (
            b'{"columns": ["interval_start", "consumption_delta", "meterpoint_id"],'
            b' "data": [["2021-01-01 00:00:00", 0.1, "A"], {"interval_start": "2021-01-01 00:30:00"}]}',
            "bad_row",
        ),
        (
            b'{"columns": ["interval_start", "consumption_delta", "meterpoint_id"],'
            b' "data": [["2021-01-01 00:00:00", 0.1, "A"], "2021-01-01 00:30:00,0.2,A"]}',
            "bad_row",
        ),
    ],
    ids=[
        "empty_bytes",
        "white_space",
        "invalid_json",
        "truncated",
        "not_utf8",
        "array_top_level",
        "array_of_objects",
        "null",
        "string",
        "number",
        "missing_columns",
        "missing_data",
        "columns_not_a_list",
        "column_name_null",
        "column_name_number",
        "required_column_missing",
        "data_not_a_list",
        "data_row_is_object",
        "data_row_is_string",
    ],
)
def test_file_level_error_rejects_the_whole_file_with_no_rows(content: bytes, reason_prefix: str) -> None:
    parsed = parse_readings(content, TZ)
    assert parsed.error is not None and parsed.error.startswith(reason_prefix), parsed.error
    assert parsed.row_index == []
    assert parsed.values == []
    assert parsed.reason == []
    assert parsed.good_rows == 0


def test_missing_required_column_is_named_in_the_error() -> None:
    parsed = parse_readings(b'{"columns": ["interval_start", "meterpoint_id", "kwh"], "data": []}', TZ)
    assert parsed.error is not None and "consumption_delta" in parsed.error
    assert parsed.columns == ["interval_start", "meterpoint_id", "kwh"]


def test_empty_data_list_is_a_valid_file_with_no_rows() -> None:
    parsed = parse_readings(readings_file([]), TZ)
    assert parsed.error is None
    assert parsed.columns == COLUMNS
    assert parsed.row_index == []


def test_utf8_byte_order_mark_is_tolerated() -> None:
    parsed = parse_readings(b"\xef\xbb\xbf" + readings_file([["2021-01-01 00:00:00", 0.1, "A"]]), TZ)
    assert parsed.error is None
    assert good(parsed) == [("A", utc(2021, 1, 1, 0, 0), 0.1)]


# ---------------------------------------------------------------- row width


def test_row_of_the_wrong_width_is_rejected_but_kept_in_values() -> None:
    parsed = parse(
        [
            ["2021-01-01 00:00:00", 0.1],
            ["2021-01-01 00:30:00", 0.2, "A"],
            ["2021-01-01 01:00:00", 0.3, "A", "extra"],
        ]
    )
    assert parsed.row_index == [0, 1, 2]
    assert parsed.reason[0] is not None and parsed.reason[0].startswith("wrong_width")
    assert parsed.reason[1] is None
    assert parsed.reason[2] is not None and parsed.reason[2].startswith("wrong_width")
    assert dict(parsed.values[0]) == {
        "interval_start": "2021-01-01 00:00:00",
        "consumption_delta": "0.1",
        "meterpoint_id": None,
    }
    assert dict(parsed.values[2])["meterpoint_id"] == "A"
    assert json.loads(parsed.row_json[2]) == ["2021-01-01 01:00:00", 0.3, "A", "extra"]
    assert good(parsed) == [("A", utc(2021, 1, 1, 0, 30), 0.2)]


def test_every_row_is_reported_in_file_order_with_its_index() -> None:
    parsed = parse(
        [
            ["2021-01-01 00:00:00", 0.1, "A"],
            ["2021-01-01 00:15:00", 0.1, "A"],
            ["2021-03-28 01:00:00", 0.1, "A"],
            ["2021-01-01 01:00:00", -1, "A"],
            ["2021-01-01 01:30:00", 0.4, "A"],
        ]
    )
    assert parsed.row_index == [0, 1, 2, 3, 4]
    assert [r.split(":")[0] if r else None for r in parsed.reason] == [
        None,
        "not_half_hour",
        "nonexistent_local_time",
        "negative_consumption",
        None,
    ]
    # rejected rows carry no typed values
    for i in (1, 2, 3):
        assert parsed.interval_start_us[i] is None
        assert parsed.consumption_kwh[i] is None


def test_the_one_pass_row_texts_equal_the_value_by_value_rules() -> None:
    """`delivered_and_json` is a faster path: it must give exactly what
    `as_delivered` and `to_json` give, value by value, for every kind of value."""
    from streaming.parsing import JsonNumber, as_delivered, delivered_and_json, load_json, to_json

    doc, error = load_json(
        b'{"rows": [["MP1", "2021-01-01 00:00:00", 0.5], [1e3, -0, 1.50, NaN, -Infinity], '
        b'[true, false, null, "", "caf\\u00e9 \\"q\\" \\\\ \\n \\ud83d\\ude00"], '
        b'[[1, [2.0, "x"]], {"a": 1, "b\\"": [null, {"c": "d"}]}, {}], []]}'
    )
    assert error is None

    class Text(str):
        """A str subclass other than JsonNumber takes the general path."""

    deep: list[object] = ["x"]
    for _ in range(5000):  # deeper than the recursive writer goes
        deep = [deep]
    for row in [*doc["rows"], [Text("a\u00e9"), JsonNumber("2")], [deep, "y"]]:
        expected = ([as_delivered(v) for v in row], "[" + ",".join(to_json(v) for v in row) + "]")
        assert delivered_and_json(row) == expected
    assert delivered_and_json([deep, "y"])[1] == '["<value nested too deeply>","y"]'
    assert delivered_and_json(doc["rows"][1]) == (
        ["1e3", "-0", "1.50", "NaN", "-Infinity"],
        "[1e3,-0,1.50,NaN,-Infinity]",
    )


@pytest.mark.parametrize(
    ("row", "reason_prefix"),
    [
        (["2021-01-01 00:00:00", "\u0661", "A"], "bad_consumption"),  # Arabic-Indic one
        (["2021-01-01 00:00:00", "\uff11.5", "A"], "bad_consumption"),  # full-width one
        (["\u0662\u0660\u0662\u0661-01-01 00:00:00", 0.1, "A"], "bad_interval_start"),
        (["2021-01-01 0\u0660:00:00", 0.1, "A"], "bad_interval_start"),
        # around a value only ASCII white space is taken away (str.strip() takes any)
        (["2021-01-01 00:00:00", "\u00a01.5", "A"], "bad_consumption"),  # no-break space
        (["2021-01-01 00:00:00\u3000", 0.1, "A"], "bad_interval_start"),  # ideographic space
    ],
)
def test_digits_other_than_ascii_are_not_numbers_or_times(row: list[Any], reason_prefix: str) -> None:
    """Python's `\\d`, `int` and `float` read any Unicode digit; a JSON number, a
    numeric string and a timestamp are 0-9 only."""
    parsed = parse([row, ["2021-01-01 00:30:00", "1", "A"]])
    assert parsed.reason[0] is not None and parsed.reason[0].startswith(reason_prefix), parsed.reason[0]
    assert parsed.reason[1] is None and parsed.consumption_kwh[1] == 1.0
