"""Reading rules of the contract for one readings file, in plain Python.

A file is parsed whole (it is one JSON object): columns are matched by name,
values are kept as delivered (strings) for the raw layer, and every row is
either a valid reading or carries the reason it was rejected. No Spark here:
`streaming.source` runs this inside the executors, and tests call it directly.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from json.encoder import encode_basestring_ascii
from typing import Any
from zoneinfo import ZoneInfo

REQUIRED_COLUMNS = ("interval_start", "consumption_delta", "meterpoint_id")

_EPOCH = datetime(1970, 1, 1)
_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_HALF_HOUR_US = 30 * 60 * 1_000_000
# re.ASCII: \d is 0-9 only (by default it is any Unicode digit, which int() and
# float() then read: "\u0661" was a valid consumption of 1 kWh)
_TIMESTAMP = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?"
    r"(Z|z|[+-]\d{2}(?::?\d{2})?)?$",
    re.ASCII,
)
_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$", re.ASCII)
_ASCII_SPACE = " \t\n\r\f\v"  # str.strip() alone strips Unicode spaces too (NBSP, ideographic)
_NOT_FINITE = {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}


@dataclass
class ParsedFile:
    """One file: its columns, a file-level error, and its rows column by column."""

    columns: list[str] | None = None
    error: str | None = None
    row_index: list[int] = field(default_factory=list)
    # each row's values as delivered, one per column (missing ones None, extra
    # ones dropped), the rows one after the other: `values` pairs them with names
    delivered: list[str | None] = field(default_factory=list)
    row_json: list[str] = field(default_factory=list)
    meterpoint_id: list[str | None] = field(default_factory=list)
    interval_start_us: list[int | None] = field(default_factory=list)
    interval_start_local_us: list[int | None] = field(default_factory=list)
    consumption_kwh: list[float | None] = field(default_factory=list)
    reason: list[str | None] = field(default_factory=list)

    @property
    def good_rows(self) -> int:
        return sum(r is None for r in self.reason)

    @property
    def values(self) -> list[list[tuple[str, str | None]]]:
        """Each row's (column, value as delivered) pairs, in the file's column order
        (built from `delivered` on each access: read it once for many rows)."""
        columns = self.columns or []
        width = len(columns)
        return [
            list(zip(columns, self.delivered[i * width : (i + 1) * width], strict=True))
            for i in range(len(self.row_index))
        ]


def as_delivered(value: Any) -> str | None:
    """A JSON value as the string the raw layer keeps (numbers keep their text)."""
    if value is None:
        return None
    if isinstance(value, str):
        return str.__str__(value)
    return to_json(value)


def to_json(value: Any) -> str:
    """Compact JSON text of a parsed value; numbers are written as delivered."""
    try:
        return _to_json(value)
    except RecursionError:  # json.loads accepts deeper nesting than a recursive writer
        return '"<value nested too deeply>"'


def _to_json(value: Any) -> str:
    if isinstance(value, JsonNumber):
        return str.__str__(value)
    if isinstance(value, list):
        return "[" + ",".join(_to_json(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{_to_json(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


class JsonNumber(str):
    """A JSON number (or NaN/Infinity literal) kept as its source text."""


def delivered_and_json(row: list[Any]) -> tuple[list[str | None], str]:
    """A row's values as delivered (`as_delivered`) and the row as compact JSON
    (`to_json`), in one pass; numbers and strings, nearly every value, take a
    short path (`json.dumps` of a string is `encode_basestring_ascii`)."""
    delivered: list[str | None] = []
    parts: list[str] = []
    for value in row:
        kind = type(value)
        if kind is JsonNumber:
            text = str.__str__(value)
            delivered.append(text)
            parts.append(text)
        elif kind is str:
            delivered.append(value)
            parts.append(encode_basestring_ascii(value))
        else:
            delivered.append(as_delivered(value))
            parts.append(to_json(value))
    return delivered, "[" + ",".join(parts) + "]"


def load_json(content: bytes) -> tuple[Any, str | None]:
    """Decode a file's bytes; numbers and NaN/Infinity stay as their source text."""
    if len(content) == 0:
        return None, "empty_file: the file is empty (0 bytes)"
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not_utf8: the file is not UTF-8 text ({exc.reason} at byte {exc.start})"
    text = text.removeprefix("\ufeff")
    if not text.strip():
        return None, "empty_file: the file holds only white space"
    try:
        doc = json.loads(text, parse_float=JsonNumber, parse_int=JsonNumber, parse_constant=JsonNumber)
    except json.JSONDecodeError as exc:
        return None, f"invalid_json: {exc.msg} at line {exc.lineno} column {exc.colno}"
    except RecursionError:
        return None, "invalid_json: nested too deeply"
    return doc, None


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "a number"
    )


def check_structure(doc: Any) -> tuple[list[str], list[list[Any]]] | str:
    """The file's columns and rows, or the reason the file as a whole is rejected."""
    if not isinstance(doc, dict):
        return f"not_an_object: the file holds {_type_name(doc)}, not a JSON object"
    for key in ("columns", "data"):
        if key not in doc:
            return f"missing_key: the object has no '{key}' (keys: {sorted(doc)[:10]})"
    columns, data = doc["columns"], doc["data"]
    if not isinstance(columns, list) or not all(
        isinstance(c, str) and not isinstance(c, JsonNumber) for c in columns
    ):
        return "bad_columns: 'columns' must be a list of column names (strings)"
    seen: set[str] = set()
    for name in columns:
        if name in seen:
            return f"bad_columns: column '{name}' appears twice"
        seen.add(name)
    missing = [c for c in REQUIRED_COLUMNS if c not in seen]
    if missing:
        return f"missing_column: required column(s) {', '.join(missing)} not in columns {columns}"
    if not isinstance(data, list):
        return f"bad_data: 'data' is {_type_name(data)}, not a list of rows"
    for i, row in enumerate(data):
        if not isinstance(row, list):
            return f"bad_row: data row {i} is {_type_name(row)}, not a list of values"
    return columns, data


@dataclass(frozen=True)
class LocalTime:
    """A parsed interval_start: instant(s) in UTC micros and local wall clock micros."""

    utc_us: int  # the instant; for an ambiguous naive time, the earlier one
    local_us: int
    later_utc_us: int | None = None  # ambiguous naive time: the later instant


def _micros(dt: datetime) -> int:
    if dt.tzinfo is None:
        return (dt - _EPOCH) // _ONE_US
    return (dt - _EPOCH_UTC) // _ONE_US


@lru_cache(maxsize=65536)
def parse_interval_start(text: str, tz_name: str) -> LocalTime | str:
    """Parse one interval_start per the contract, or return the rejection reason."""
    m = _TIMESTAMP.match(text.strip(_ASCII_SPACE))
    if not m:
        return f"bad_interval_start: {text!r} is not a timestamp YYYY-MM-DD HH:MM:SS"
    try:
        return _parse_valid_format(text, tz_name, m.groups())
    except (ValueError, OverflowError):  # out of range, or beyond year 1..9999 in UTC
        return f"bad_interval_start: {text!r} is not a valid date and time"


def _parse_valid_format(text: str, tz_name: str, groups: tuple[str, ...]) -> LocalTime | str:
    year, month, day, hour, minute, second, frac, offset = groups
    naive = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0))
    if naive.second != 0 or (frac and int(frac) != 0):
        return f"not_half_hour: {text!r} does not start on :00 or :30"
    tz: tzinfo = ZoneInfo(tz_name)
    if offset is not None:
        if offset in ("Z", "z"):
            aware = naive.replace(tzinfo=UTC)
        else:
            sign = -1 if offset[0] == "-" else 1
            digits = offset[1:].replace(":", "")
            hours, mins = int(digits[:2]), int(digits[2:4] or 0)
            if hours > 23 or mins > 59:
                return f"bad_interval_start: {text!r} has an invalid UTC offset"
            aware = naive.replace(tzinfo=_fixed(sign * (hours * 60 + mins)))
        utc_us = _micros(aware)
        if utc_us % _HALF_HOUR_US:
            return f"not_half_hour: {text!r} does not start on :00 or :30"
        local = aware.astimezone(tz).replace(tzinfo=None)
        return LocalTime(utc_us=utc_us, local_us=_micros(local))
    if naive.minute not in (0, 30):
        return f"not_half_hour: {text!r} does not start on :00 or :30"
    early = naive.replace(tzinfo=tz, fold=0)
    late = naive.replace(tzinfo=tz, fold=1)
    # A wall time in the spring-forward gap does not survive a round trip.
    if early.astimezone(UTC).astimezone(tz).replace(tzinfo=None) != naive:
        return f"nonexistent_local_time: {text!r} does not exist in {tz_name} (clocks go forward)"
    early_us, late_us = _micros(early), _micros(late)
    return LocalTime(
        utc_us=early_us,
        local_us=_micros(naive),
        later_utc_us=late_us if late_us != early_us else None,
    )


@lru_cache(maxsize=64)
def _fixed(minutes: int) -> tzinfo:
    from datetime import timezone

    return timezone(timedelta(minutes=minutes))


def parse_consumption(value: Any) -> float | str:
    """kWh as a finite number >= 0, or the rejection reason."""
    if type(value) is JsonNumber:  # nearly every value: JSON number text, or NaN/Infinity
        kwh = float(value)
        if 0 <= kwh < math.inf:
            return kwh + 0.0  # -0.0 becomes 0.0
        # NaN, infinite or negative: the checks below give the reason
    if value is None:
        return "bad_consumption: consumption_delta is null"
    if not isinstance(value, str):  # booleans, lists, objects (numbers arrive as text)
        return f"bad_consumption: consumption_delta {as_delivered(value)} is not a number"
    text = value.strip(_ASCII_SPACE)
    if text.lower() in _NOT_FINITE:
        return f"bad_consumption: consumption_delta {value!r} is not finite"
    if not _NUMBER.match(text):
        return f"bad_consumption: consumption_delta {value!r} is not a number"
    kwh = float(text)
    if not math.isfinite(kwh):
        return f"bad_consumption: consumption_delta {value!r} is not finite"
    if kwh < 0:
        return f"negative_consumption: consumption_delta {value!r} is negative"
    return kwh + 0.0  # -0.0 becomes 0.0


def parse_meterpoint(value: Any) -> str | None:
    """The meterpoint id, or None when it is missing, empty or not a string."""
    if isinstance(value, str) and not isinstance(value, JsonNumber) and value.strip():
        return value
    return None


def parse_readings(content: bytes, tz_name: str) -> ParsedFile:
    """Parse one readings file; never raises on bad input."""
    out = ParsedFile()
    doc, error = load_json(content)
    if error is not None:
        out.error = error
        return out
    structure = check_structure(doc)
    if isinstance(structure, str):
        out.error = structure
        if isinstance(doc, dict) and isinstance(doc.get("columns"), list):
            out.columns = [c for c in doc["columns"] if isinstance(c, str) and not isinstance(c, JsonNumber)]
        return out
    columns, data = structure
    out.columns = columns
    at = _Positions(
        len(columns),
        columns.index("meterpoint_id"),
        columns.index("interval_start"),
        columns.index("consumption_delta"),
    )
    # naive ambiguous (fall-back) times seen so far in this file, per meterpoint
    seen_ambiguous: set[tuple[Any, int]] = set()
    for i, row in enumerate(data):
        try:
            _parse_row(out, i, row, at, tz_name, seen_ambiguous)
        except (RecursionError, ValueError, OverflowError, TypeError) as exc:
            # a value the rules above did not foresee: the row is rejected, never the file
            _reject_row(
                out, i, row, columns, f"unreadable_row: a value could not be read ({type(exc).__name__})"
            )
    return out


def _reject_row(out: ParsedFile, i: int, row: list[Any], columns: list[str], reason: str) -> None:
    """Append row `i` as rejected, with values as delivered where they can be written."""
    width = len(columns)
    del out.row_index[i:], out.delivered[i * width :], out.row_json[i:], out.meterpoint_id[i:]
    del out.interval_start_us[i:], out.interval_start_local_us[i:], out.consumption_kwh[i:], out.reason[i:]
    values: list[str | None] = []
    for v in row:
        try:
            values.append(as_delivered(v))
        except RecursionError:
            values.append("<nested too deeply>")
    out.row_index.append(i)
    _add_delivered(out.delivered, values, width)
    out.row_json.append("[" + ",".join("null" if v is None else json.dumps(v) for v in values) + "]")
    out.meterpoint_id.append(None)
    out.interval_start_us.append(None)
    out.interval_start_local_us.append(None)
    out.consumption_kwh.append(None)
    out.reason.append(reason)


@dataclass(frozen=True)
class _Positions:
    """A file's width and where its required columns are."""

    width: int
    meterpoint_id: int
    interval_start: int
    consumption_delta: int


def _add_delivered(delivered: list[str | None], values: list[str | None], width: int) -> None:
    """Append one row's values to the flat list: exactly `width` of them."""
    if len(values) == width:
        delivered.extend(values)
    elif len(values) < width:
        delivered.extend(values)
        delivered.extend([None] * (width - len(values)))
    else:
        delivered.extend(values[:width])


def _parse_row(
    out: ParsedFile,
    i: int,
    row: list[Any],
    at: _Positions,
    tz_name: str,
    seen_ambiguous: set[tuple[Any, int]],
) -> None:
    """Append row `i` of a file to `out`, valid or with the reason it is rejected."""
    width = at.width
    delivered, row_json = delivered_and_json(row)
    out.row_index.append(i)
    _add_delivered(out.delivered, delivered, width)
    out.row_json.append(row_json)
    reason: str | None = None
    meterpoint = utc_us = local_us = kwh = None
    if len(row) != width:
        reason = f"wrong_width: row has {len(row)} values, columns has {width}"
    else:
        raw_mp, raw_ts, raw_kwh = row[at.meterpoint_id], row[at.interval_start], row[at.consumption_delta]
        meterpoint = parse_meterpoint(raw_mp)
        if meterpoint is None:
            reason = f"bad_meterpoint: meterpoint_id must be a non-empty string, got {to_json(raw_mp)}"
        if raw_ts is None:
            reason = reason or "bad_interval_start: interval_start is null"
        elif not isinstance(raw_ts, str):
            reason = reason or f"bad_interval_start: {as_delivered(raw_ts)!r} is not a timestamp"
        else:
            parsed = parse_interval_start(raw_ts, tz_name)
            if isinstance(parsed, str):
                reason = reason or parsed
            else:
                utc_us, local_us = parsed.utc_us, parsed.local_us
                if parsed.later_utc_us is not None and meterpoint is not None:
                    key = (meterpoint, parsed.local_us)
                    if key in seen_ambiguous:
                        utc_us = parsed.later_utc_us
                    seen_ambiguous.add(key)
        parsed_kwh = parse_consumption(raw_kwh)
        if isinstance(parsed_kwh, str):
            reason = reason or parsed_kwh
        else:
            kwh = parsed_kwh
    if reason is not None:
        meterpoint = utc_us = local_us = kwh = None
    out.meterpoint_id.append(meterpoint)
    out.interval_start_us.append(utc_us)
    out.interval_start_local_us.append(local_us)
    out.consumption_kwh.append(kwh)
    out.reason.append(reason)
