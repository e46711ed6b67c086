"""Independent test oracle for the smart-meter readings pipeline.

A plain-Python (standard library only) reference computation of what the
pipeline's output tables must contain, written straight from
``shared/CONTRACT.md`` and deliberately independent of ``streaming/*.py``.
Tests feed it the same files and SQLite database as the pipeline and compare
the pipeline's Delta tables (collected to lists of dicts) with its result via
:func:`assert_tables_match`.

Typical use::

    deliveries = load_deliveries([readings_dir])          # or explicit files
    staging = expected_staging([deliveries], "Europe/London")  # one batch
    expected = expected_tables(staging, db_path, as_of=date(2021, 1, 1))
    assert_tables_match(actual_tables, expected, TABLE_KEYS)
    assert reconciliation_errors(actual_tables) == []

Where the contract is silent the oracle makes a choice; tests should not pin
the pipeline to these (they are listed so that a test author knows which
corners are *not* specified):

* duplicate column names: the first occurrence is used;
* a data row shorter than ``columns``: missing cells are NULL (row rejected if
  a required one is missing); extra cells are ignored;
* fractional seconds are accepted only when they are all zero;
* offsets may be written ``Z``, ``+HH:MM``, ``+HHMM`` or ``+HH``; the ":00 or
  :30" rule is checked on the instant (UTC minute, equal to the London minute);
* autumn fall-back occurrences are counted per (file, meterpoint_id) over the
  rows whose meterpoint_id is valid and whose interval_start is a valid naive
  ambiguous local time, whatever their consumption_delta;
* meterpoint_id must be a JSON string that is not blank (whitespace only
  counts as empty); it is kept exactly as delivered;
* numeric strings may have surrounding whitespace; ``-0`` becomes ``0.0``;
* file modification times are compared at millisecond precision (as Hadoop
  file systems report them), then by name, then by full path;
* several product rows with one product_id / meterpoint rows with one
  meterpoint_id: the last one read (by SQLite rowid order) wins.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

__all__ = [
    "REQUIRED_COLUMNS",
    "TABLE_KEYS",
    "Agreement",
    "Dimensions",
    "FileDelivery",
    "Reading",
    "assert_tables_match",
    "attribute",
    "expected_rejections",
    "expected_staging",
    "expected_tables",
    "load_deliveries",
    "load_dimensions",
    "parse_delivery",
    "parse_file",
    "reconciliation_errors",
    "tables_diff",
]

DEFAULT_TZ = "Europe/London"
REQUIRED_COLUMNS = ("interval_start", "consumption_delta", "meterpoint_id")

# Table names (relative to the lake root) and their key columns.
STAGING = "staging/readings"
ACTIVE = "presentation/active_agreements"
TOTAL_HH = "presentation/total_consumption_half_hour"
PER_PRODUCT_DAY = "presentation/consumption_per_product_per_day"
GOLD_HH = "presentation/gold_aggregate_per_half_hour"
GOLD_PRODUCT_HH = "presentation/gold_avg_half_hour_by_product"

TABLE_KEYS: dict[str, tuple[str, ...]] = {
    STAGING: ("meterpoint_id", "interval_start"),
    ACTIVE: ("agreement_id",),
    TOTAL_HH: ("interval_start",),
    PER_PRODUCT_DAY: ("product_display_name", "date"),
    GOLD_HH: ("interval_start",),
    GOLD_PRODUCT_HH: ("product_display_name", "interval_start"),
}

# --------------------------------------------------------------------------
# Rejection reasons (free text in the pipeline; tests should compare counts,
# not wording).
# --------------------------------------------------------------------------
FILE_NOT_JSON = "file is not valid JSON"
FILE_NOT_OBJECT = "file is not a JSON object"
FILE_NO_COLUMNS = "file has no 'columns'"
FILE_NO_DATA = "file has no 'data'"
FILE_BAD_COLUMNS = "'columns' is not a list of strings"
FILE_BAD_DATA = "'data' is not a list"
FILE_MISSING_REQUIRED = "required column missing: {}"
FILE_BAD_ROW = "data row {} is not a list"

ROW_TS_MISSING = "interval_start missing"
ROW_TS_FORMAT = "interval_start not a valid timestamp"
ROW_TS_NOT_HALF_HOUR = "interval_start not on :00 or :30"
ROW_TS_NONEXISTENT = "interval_start does not exist in local time"
ROW_KWH_MISSING = "consumption_delta missing"
ROW_KWH_NOT_NUMBER = "consumption_delta not a number"
ROW_KWH_NOT_FINITE = "consumption_delta not finite"
ROW_KWH_NEGATIVE = "consumption_delta negative"
ROW_MP_MISSING = "meterpoint_id missing"
ROW_MP_INVALID = "meterpoint_id not a non-empty string"


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------
@dataclass
class FileDelivery:
    path: Path
    name: str
    mtime: float


def _ignored_name(name: str) -> bool:
    return name.startswith(".") or name.startswith("_") or not name.endswith(".json")


def load_deliveries(paths: Iterable[Path | str]) -> list[FileDelivery]:
    """FileDelivery for each path, with its current modification time.

    A directory expands to its ``*.json`` files (not recursive), sorted by
    name. Names starting with ``.`` or ``_`` (and non-``.json`` names) are
    ignored, as the pipeline ignores them, whether given directly or found in
    a directory.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: list[FileDelivery] = []
    for p in paths:
        p = Path(p)
        files = sorted(c for c in p.iterdir() if c.is_file()) if p.is_dir() else [p]
        for f in files:
            if _ignored_name(f.name):
                continue
            out.append(FileDelivery(path=f, name=f.name, mtime=f.stat().st_mtime))
    return out


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------
@dataclass
class Reading:
    meterpoint_id: str
    instant: datetime  # aware, UTC
    local: datetime  # naive, local wall clock
    reading_date: date  # local date
    kwh: float
    source_file: str
    mtime: float
    row_index: int
    source_name: str = field(default="", compare=False)


_NAIVE_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?$")
_OFFSET_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(Z|z|[+-]\d{2}(?::?\d{2})?)$"
)
_DECIMAL_RE = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_NONFINITE_RE = re.compile(r"^[+-]?(?:nan|inf|infinity)$", re.IGNORECASE)


class _Invalid(Exception):
    pass


def _to_utc(local_naive: datetime, tz: ZoneInfo, fold: int) -> datetime:
    return local_naive.replace(tzinfo=tz, fold=fold).astimezone(UTC)


def _local_exists(local_naive: datetime, tz: ZoneInfo) -> bool:
    for fold in (0, 1):
        back = _to_utc(local_naive, tz, fold).astimezone(tz).replace(tzinfo=None)
        if back == local_naive:
            return True
    return False


def _is_ambiguous(local_naive: datetime, tz: ZoneInfo) -> bool:
    a = _to_utc(local_naive, tz, 0)
    b = _to_utc(local_naive, tz, 1)
    return a != b and _local_exists(local_naive, tz)


def _parse_naive(s: str) -> datetime | None:
    """Naive local datetime, or None if `s` is not of the naive form.

    Raises _Invalid for a naive-form string that is not a valid timestamp.
    """
    m = _NAIVE_RE.match(s)
    if not m:
        return None
    y, mo, d, h, mi, se, frac = m.groups()
    if frac is not None and int(frac) != 0:
        raise _Invalid(ROW_TS_NOT_HALF_HOUR)
    try:
        dt = datetime(int(y), int(mo), int(d), int(h), int(mi), int(se))
    except ValueError:
        raise _Invalid(ROW_TS_FORMAT) from None
    if dt.minute not in (0, 30) or dt.second != 0:
        raise _Invalid(ROW_TS_NOT_HALF_HOUR)
    return dt


def _parse_offset(s: str) -> datetime:
    """Aware UTC instant of an ISO 8601 string with offset or Z."""
    m = _OFFSET_RE.match(s)
    if not m:
        raise _Invalid(ROW_TS_FORMAT)
    y, mo, d, h, mi, se, frac, off = m.groups()
    if off in ("Z", "z"):
        offset = timedelta(0)
    else:
        sign = -1 if off[0] == "-" else 1
        digits = off[1:].replace(":", "")
        oh = int(digits[:2])
        om = int(digits[2:4]) if len(digits) > 2 else 0
        if oh > 23 or om > 59:
            raise _Invalid(ROW_TS_FORMAT)
        offset = sign * timedelta(hours=oh, minutes=om)
    try:
        dt = datetime(int(y), int(mo), int(d), int(h), int(mi), int(se), tzinfo=timezone(offset))
    except ValueError:
        raise _Invalid(ROW_TS_FORMAT) from None
    if frac is not None and int(frac) != 0:
        raise _Invalid(ROW_TS_NOT_HALF_HOUR)
    inst = dt.astimezone(UTC)
    if inst.minute not in (0, 30) or inst.second != 0:
        raise _Invalid(ROW_TS_NOT_HALF_HOUR)
    return inst


def _parse_kwh(v: Any) -> float:
    if v is None:
        raise _Invalid(ROW_KWH_MISSING)
    if isinstance(v, bool):
        raise _Invalid(ROW_KWH_NOT_NUMBER)
    if isinstance(v, int):
        try:
            x = float(v)
        except OverflowError:
            raise _Invalid(ROW_KWH_NOT_FINITE) from None
    elif isinstance(v, float):
        x = v
    elif isinstance(v, str):
        s = v.strip()
        if _NONFINITE_RE.match(s):
            raise _Invalid(ROW_KWH_NOT_FINITE)
        if not _DECIMAL_RE.match(s):
            raise _Invalid(ROW_KWH_NOT_NUMBER)
        x = float(s)
    else:
        raise _Invalid(ROW_KWH_NOT_NUMBER)
    if not math.isfinite(x):
        raise _Invalid(ROW_KWH_NOT_FINITE)
    if x < 0:
        raise _Invalid(ROW_KWH_NEGATIVE)
    return x + 0.0  # -0.0 -> 0.0


def _valid_meterpoint(v: Any) -> bool:
    return isinstance(v, str) and v.strip() != ""


def parse_file(
    path: Path,
    tz: str = DEFAULT_TZ,
    *,
    mtime: float | None = None,
    source_file: str | None = None,
) -> tuple[list[Reading], list[tuple[int, str]], str | None]:
    """Parse one readings file.

    Returns (good readings, rejected rows as (row index, reason), file-level
    rejection reason or None). When the file is rejected as a whole, both
    lists are empty.
    """
    path = Path(path)
    zone = ZoneInfo(tz)
    if mtime is None:
        mtime = path.stat().st_mtime
    if source_file is None:
        source_file = str(path)

    def file_reject(reason: str):
        return [], [], reason

    try:
        text = path.read_bytes().decode("utf-8-sig")
        obj = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return file_reject(FILE_NOT_JSON)
    if not isinstance(obj, dict):
        return file_reject(FILE_NOT_OBJECT)
    if "columns" not in obj:
        return file_reject(FILE_NO_COLUMNS)
    if "data" not in obj:
        return file_reject(FILE_NO_DATA)
    columns, data = obj["columns"], obj["data"]
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        return file_reject(FILE_BAD_COLUMNS)
    if not isinstance(data, list):
        return file_reject(FILE_BAD_DATA)
    index: dict[str, int] = {}
    for i, c in enumerate(columns):
        index.setdefault(c, i)
    for req in REQUIRED_COLUMNS:
        if req not in index:
            return file_reject(FILE_MISSING_REQUIRED.format(req))
    for i, row in enumerate(data):
        if not isinstance(row, list):
            return file_reject(FILE_BAD_ROW.format(i))

    i_ts, i_kwh, i_mp = (index[c] for c in REQUIRED_COLUMNS)

    def cell(row: list, i: int) -> Any:
        return row[i] if i < len(row) else None

    good: list[Reading] = []
    bad: list[tuple[int, str]] = []
    # (meterpoint_id, naive local) -> occurrences so far in this file
    seen_ambiguous: dict[tuple[str, datetime], int] = defaultdict(int)

    for r, row in enumerate(data):
        ts, kwh_raw, mp = cell(row, i_ts), cell(row, i_kwh), cell(row, i_mp)
        try:
            # -- interval_start --
            if ts is None:
                raise _Invalid(ROW_TS_MISSING)
            if not isinstance(ts, str):
                raise _Invalid(ROW_TS_FORMAT)
            naive = _parse_naive(ts)
            if naive is not None:
                if not _local_exists(naive, zone):
                    raise _Invalid(ROW_TS_NONEXISTENT)
                fold = 0
                if _is_ambiguous(naive, zone) and _valid_meterpoint(mp):
                    k = (mp, naive)
                    fold = 0 if seen_ambiguous[k] == 0 else 1
                    seen_ambiguous[k] += 1
                instant = _to_utc(naive, zone, fold)
                local = naive
            else:
                instant = _parse_offset(ts)
                local = instant.astimezone(zone).replace(tzinfo=None)
            # -- consumption_delta --
            kwh = _parse_kwh(kwh_raw)
            # -- meterpoint_id --
            if mp is None:
                raise _Invalid(ROW_MP_MISSING)
            if not _valid_meterpoint(mp):
                raise _Invalid(ROW_MP_INVALID)
        except _Invalid as e:
            bad.append((r, str(e)))
            continue
        good.append(
            Reading(
                meterpoint_id=mp,
                instant=instant,
                local=local,
                reading_date=local.date(),
                kwh=kwh,
                source_file=source_file,
                mtime=mtime,
                row_index=r,
                source_name=path.name,
            )
        )
    return good, bad, None


def parse_delivery(
    d: FileDelivery, tz: str = DEFAULT_TZ
) -> tuple[list[Reading], list[tuple[int, str]], str | None]:
    """parse_file with the delivery's recorded mtime and name."""
    good, bad, freason = parse_file(d.path, tz, mtime=d.mtime, source_file=str(d.path))
    for g in good:
        g.source_name = d.name
    return good, bad, freason


# --------------------------------------------------------------------------
# Staging (latest wins)
# --------------------------------------------------------------------------
def _within_batch_order(d: FileDelivery) -> tuple:
    return (math.floor(d.mtime * 1000), d.name, str(d.path))


def expected_staging(
    batches: list[list[FileDelivery]], tz: str = DEFAULT_TZ
) -> dict[tuple[str, datetime], Reading]:
    """The winning reading per (meterpoint_id, UTC instant).

    `batches` is the order in which micro-batches processed the files. A later
    batch overrides an earlier one; within one batch the file with the later
    mtime, then the greater name, then the later row wins.
    """
    state: dict[tuple[str, datetime], Reading] = {}
    for batch in batches:
        batch_best: dict[tuple[str, datetime], tuple[tuple, Reading]] = {}
        for d in batch:
            good, _bad, _freason = parse_delivery(d, tz)
            order = _within_batch_order(d)
            for g in good:
                k = (g.meterpoint_id, g.instant)
                rank = (order, g.row_index)
                cur = batch_best.get(k)
                if cur is None or rank > cur[0]:
                    batch_best[k] = (rank, g)
        for k, (_rank, g) in batch_best.items():
            state[k] = g
    return state


def expected_rejections(
    batches: list[list[FileDelivery]], tz: str = DEFAULT_TZ
) -> tuple[list[tuple[str, int, str]], list[tuple[str, str]]]:
    """(rejected rows as (file path, row index, reason),
    rejected files as (file path, reason)), one entry per processing."""
    rows: list[tuple[str, int, str]] = []
    files: list[tuple[str, str]] = []
    for batch in batches:
        for d in batch:
            _good, bad, freason = parse_delivery(d, tz)
            if freason is not None:
                files.append((str(d.path), freason))
            rows.extend((str(d.path), i, reason) for i, reason in bad)
    return rows, files


# --------------------------------------------------------------------------
# Dimensions
# --------------------------------------------------------------------------
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _parse_date(v: Any) -> date | None:
    if isinstance(v, datetime):
        return v.date()
    if isinstance(v, date):
        return v
    if not isinstance(v, str) or not _DATE_RE.match(v):
        return None
    try:
        return date.fromisoformat(v)
    except ValueError:
        return None


def _join_key(v: Any) -> str | None:
    """Canonical text of an id for joining (1, 1.0 and '1' are one key)."""
    if v is None:
        return None
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, (int, float, Decimal)):
        if isinstance(v, Decimal) and v == v.to_integral_value():
            return str(int(v))
        return str(v)
    return str(v)


def _as_int_if_possible(v: Any) -> Any:
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and re.fullmatch(r"[+-]?\d+", v.strip()):
        return int(v.strip())
    return v


def _id_sort_key(v: Any) -> tuple:
    v2 = _as_int_if_possible(v)
    if isinstance(v2, int) and not isinstance(v2, bool):
        return (1, v2, "")
    return (0, 0, "" if v is None else str(v))


def _parse_bool(v: Any) -> bool | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        if v == 1:
            return True
        if v == 0:
            return False
        return None
    if isinstance(v, str):
        s = v.strip().lower()
        if s in ("true", "t", "1", "yes", "y"):
            return True
        if s in ("false", "f", "0", "no", "n"):
            return False
    return None


@dataclass
class Agreement:
    agreement_id: Any  # int when the source value is an integer
    valid_from: date | None
    valid_to: date | None
    valid_to_raw: Any
    product_id: Any
    meterpoint_id: Any
    account_id: Any

    @property
    def dates_ok(self) -> bool:
        return self.valid_from is not None and (self.valid_to_raw is None or self.valid_to is not None)

    def covers(self, d: date) -> bool:
        if not self.dates_ok:
            return False
        return self.valid_from <= d and (self.valid_to is None or d < self.valid_to)

    def active_on(self, as_of: date) -> bool:
        if not self.dates_ok:
            return False
        return self.valid_from < as_of and (self.valid_to is None or self.valid_to > as_of)


@dataclass
class Dimensions:
    agreements: list[Agreement]
    # product join key -> (display_name, is_variable)
    products: dict[str, tuple[Any, bool | None]]
    # meterpoint join key -> region
    regions: dict[str, Any]
    by_meterpoint: dict[str, list[Agreement]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        idx: dict[str, list[Agreement]] = defaultdict(list)
        for a in self.agreements:
            idx[_join_key(a.meterpoint_id)].append(a)
        self.by_meterpoint = dict(idx)


def _rows(con: sqlite3.Connection, table: str) -> list[dict[str, Any]]:
    try:
        cur = con.execute(f'SELECT * FROM "{table}" ORDER BY rowid')
    except sqlite3.OperationalError:  # WITHOUT ROWID table or a view
        cur = con.execute(f'SELECT * FROM "{table}"')
    names = [d[0].lower() for d in cur.description]
    return [dict(zip(names, r, strict=False)) for r in cur.fetchall()]


def load_dimensions(db_path: Path | str) -> Dimensions:
    """Read agreement, product and meterpoint from the SQLite DB (read-only)."""
    uri = Path(db_path).resolve().as_uri() + "?mode=ro"
    con = sqlite3.connect(uri, uri=True)
    try:
        agreements_raw = _rows(con, "agreement")
        products_raw = _rows(con, "product")
        meterpoints_raw = _rows(con, "meterpoint")
    finally:
        con.close()
    agreements = [
        Agreement(
            agreement_id=_as_int_if_possible(r.get("agreement_id")),
            valid_from=_parse_date(r.get("agreement_valid_from")),
            valid_to=_parse_date(r.get("agreement_valid_to")),
            valid_to_raw=r.get("agreement_valid_to"),
            product_id=r.get("product_id"),
            meterpoint_id=r.get("meterpoint_id"),
            account_id=r.get("account_id"),
        )
        for r in agreements_raw
    ]
    products = {
        _join_key(r.get("product_id")): (r.get("display_name"), _parse_bool(r.get("is_variable")))
        for r in products_raw
        if r.get("product_id") is not None
    }
    regions = {
        _join_key(r.get("meterpoint_id")): r.get("region")
        for r in meterpoints_raw
        if r.get("meterpoint_id") is not None
    }
    return Dimensions(agreements=agreements, products=products, regions=regions)


def _covering_agreement(meterpoint_id: Any, d: date, dims: Dimensions) -> Agreement | None:
    best: Agreement | None = None
    for a in dims.by_meterpoint.get(_join_key(meterpoint_id), []):
        if not a.covers(d):
            continue
        if best is None or (a.valid_from, _id_sort_key(a.agreement_id)) > (
            best.valid_from,
            _id_sort_key(best.agreement_id),
        ):
            best = a
    return best


def attribute(reading: Reading, dims: Dimensions) -> dict[str, Any]:
    """Point-in-time attribution of one reading (by its LOCAL date)."""
    region = dims.regions.get(_join_key(reading.meterpoint_id))
    a = _covering_agreement(reading.meterpoint_id, reading.reading_date, dims)
    if a is None:
        return {
            "agreement_id": None,
            "product_id": None,
            "product_display_name": None,
            "product_is_variable": None,
            "region": region,
            "account_id": None,
        }
    name, is_var = dims.products.get(_join_key(a.product_id), (None, None))
    return {
        "agreement_id": a.agreement_id,
        "product_id": a.product_id,
        "product_display_name": name,
        "product_is_variable": is_var,
        "region": region,
        "account_id": a.account_id,
    }


# --------------------------------------------------------------------------
# Expected tables
# --------------------------------------------------------------------------
def _fsum(xs: Iterable[float]) -> float:
    return math.fsum(xs)


def _none_first(v: Any) -> tuple:
    return (0, "") if v is None else (1, v)


def expected_tables(
    staging: dict[tuple[str, datetime], Reading],
    db_path: Path | str,
    as_of: date = date(2021, 1, 1),
    dims: Dimensions | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """All contract tables computed from the winning readings and the DB."""
    if dims is None:
        dims = load_dimensions(db_path)

    staging_rows: list[dict[str, Any]] = []
    for (_mp, _inst), rd in sorted(staging.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        attr = attribute(rd, dims)
        staging_rows.append(
            {
                "meterpoint_id": rd.meterpoint_id,
                "interval_start": rd.instant,
                "interval_start_local": rd.local,
                "reading_date": rd.reading_date,
                "consumption_kwh": rd.kwh,
                **attr,
            }
        )

    active: list[dict[str, Any]] = []
    for a in dims.agreements:
        if not a.active_on(as_of):
            continue
        name, is_var = dims.products.get(_join_key(a.product_id), (None, None))
        active.append(
            {
                "agreement_id": a.agreement_id,
                "meterpoint_id": a.meterpoint_id,
                "product_display_name": name,
                "product_is_variable": is_var,
            }
        )
    active.sort(key=lambda r: _id_sort_key(r["agreement_id"]))

    # group by instant
    by_instant: dict[datetime, list[dict]] = defaultdict(list)
    by_product_day: dict[tuple[Any, date], list[dict]] = defaultdict(list)
    by_product_instant: dict[tuple[Any, datetime], list[dict]] = defaultdict(list)
    for r in staging_rows:
        by_instant[r["interval_start"]].append(r)
        by_product_day[(r["product_display_name"], r["reading_date"])].append(r)
        by_product_instant[(r["product_display_name"], r["interval_start"])].append(r)

    def agg(rows: list[dict]) -> tuple[int, float]:
        return (
            len({r["meterpoint_id"] for r in rows}),
            _fsum(r["consumption_kwh"] for r in rows),
        )

    total_hh: list[dict[str, Any]] = []
    gold_hh: list[dict[str, Any]] = []
    for inst in sorted(by_instant):
        rows = by_instant[inst]
        n, total = agg(rows)
        local = rows[0]["interval_start_local"]
        total_hh.append(
            {"interval_start": inst, "interval_start_local": local, "meterpoint_count": n, "total_kwh": total}
        )
        gold_hh.append(
            {
                "interval_start": inst,
                "interval_start_local": local,
                "meterpoint_count": n,
                "total_kwh": total,
                "avg_kwh": total / n,
            }
        )

    per_product_day: list[dict[str, Any]] = []
    for name, d in sorted(by_product_day, key=lambda k: (_none_first(k[0]), k[1])):
        n, total = agg(by_product_day[(name, d)])
        per_product_day.append(
            {"product_display_name": name, "date": d, "meterpoint_count": n, "total_kwh": total}
        )

    gold_product_hh: list[dict[str, Any]] = []
    for name, inst in sorted(by_product_instant, key=lambda k: (_none_first(k[0]), k[1])):
        rows = by_product_instant[(name, inst)]
        n, total = agg(rows)
        gold_product_hh.append(
            {
                "product_display_name": name,
                "interval_start": inst,
                "interval_start_local": rows[0]["interval_start_local"],
                "meterpoint_count": n,
                "total_kwh": total,
                "avg_kwh": total / n,
            }
        )

    return {
        STAGING: staging_rows,
        ACTIVE: active,
        TOTAL_HH: total_hh,
        PER_PRODUCT_DAY: per_product_day,
        GOLD_HH: gold_hh,
        GOLD_PRODUCT_HH: gold_product_hh,
    }


# --------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------
_INSTANT_COLUMNS = {"interval_start"}
_LOCAL_TS_COLUMNS = {"interval_start_local"}
_DATE_COLUMNS = {"date", "reading_date"}


class _Bool:
    """Hashable tag so that True never equals 1 in a key or a value."""

    __slots__ = ("v",)

    def __init__(self, v: bool) -> None:
        self.v = v

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Bool) and other.v == self.v

    def __hash__(self) -> int:
        return hash(("bool", self.v))

    def __repr__(self) -> str:
        return repr(self.v)


def _canon(col: str, v: Any) -> Any:
    """Normalise a value of column `col` for comparison."""
    if v is None:
        return None
    if col in _INSTANT_COLUMNS:
        if isinstance(v, str):
            v = datetime.fromisoformat(v.replace("Z", "+00:00"))
        if isinstance(v, datetime):
            if v.tzinfo is not None:
                v = v.astimezone(UTC).replace(tzinfo=None)
            return v
        return v
    if col in _LOCAL_TS_COLUMNS:
        if isinstance(v, str):
            v = datetime.fromisoformat(v)
        return v  # aware values stay aware and so never equal a naive one
    if col in _DATE_COLUMNS:
        if isinstance(v, datetime):
            return v.date()
        if isinstance(v, str):
            return date.fromisoformat(v[:10])
        return v
    if isinstance(v, bool):
        return _Bool(v)
    if col.endswith("_id"):
        return _join_key(v)
    if isinstance(v, Decimal):
        return float(v)
    return v


def _values_equal(a: Any, b: Any, rel_tol: float, abs_tol: float) -> bool:
    num = (int, float)
    if isinstance(a, num) and isinstance(b, num):
        if isinstance(a, float) or isinstance(b, float):
            if math.isnan(a) or math.isnan(b):
                return math.isnan(a) and math.isnan(b)
            return math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)
        return a == b
    if type(a) is datetime and type(b) is datetime and (a.tzinfo is None) != (b.tzinfo is None):
        return False
    return a == b


_MISSING = object()


def _row_diff(exp: dict, act: dict, rel_tol: float, abs_tol: float) -> dict[str, tuple]:
    diff = {}
    for col, ev in exp.items():
        av = act.get(col, _MISSING)
        if av is _MISSING:
            diff[col] = (ev, "<column missing>")
            continue
        ce, ca = _canon(col, ev), _canon(col, av)
        if not _values_equal(ce, ca, rel_tol, abs_tol):
            diff[col] = (ev, av)
    return diff


def tables_diff(
    actual: dict[str, list[dict]],
    expected: dict[str, list[dict]],
    keys: dict[str, tuple[str, ...]] | None = None,
    rel_tol: float = 1e-9,
    abs_tol: float = 1e-9,
    show: int = 5,
) -> list[str]:
    """Human-readable differences (empty list: the tables match).

    Every table in `expected` must be in `actual`; only the columns present in
    the expected rows are compared (extra actual columns such as ingested_at
    are ignored). Rows are matched as multisets by the table's key columns.
    """
    keys = keys or TABLE_KEYS
    problems: list[str] = []
    for table, exp_rows in expected.items():
        if table not in actual:
            problems.append(f"{table}: table missing from actual")
            continue
        act_rows = actual[table]
        kcols = keys.get(table)
        if not kcols:
            problems.append(f"{table}: no key columns given")
            continue

        def key(row: dict, kcols: tuple = tuple(kcols)) -> tuple:
            return tuple(_canon(c, row.get(c)) for c in kcols)

        exp_by: dict[tuple, list[dict]] = defaultdict(list)
        act_by: dict[tuple, list[dict]] = defaultdict(list)
        for r in exp_rows:
            exp_by[key(r)].append(r)
        for r in act_rows:
            act_by[key(r)].append(r)

        missing, extra, differing = [], [], []
        for k in exp_by.keys() | act_by.keys():
            e_list, a_list = list(exp_by.get(k, [])), list(act_by.get(k, []))
            if not a_list:
                missing.append((k, e_list))
                continue
            if not e_list:
                extra.append((k, a_list))
                continue
            unmatched_e = []
            for e in e_list:
                for i, a in enumerate(a_list):
                    if not _row_diff(e, a, rel_tol, abs_tol):
                        del a_list[i]
                        break
                else:
                    unmatched_e.append(e)
            if unmatched_e or a_list:
                differing.append((k, unmatched_e, a_list))

        if not (missing or extra or differing):
            continue
        problems.append(
            f"{table}: expected {len(exp_rows)} rows, actual {len(act_rows)}; "
            f"{len(missing)} keys missing, {len(extra)} extra, {len(differing)} differing "
            f"(key {kcols})"
        )

        def ksort(item):
            return repr(item[0])

        for k, rows in sorted(missing, key=ksort)[:show]:
            problems.append(f"  missing {k}: expected {rows}")
        for k, rows in sorted(extra, key=ksort)[:show]:
            problems.append(f"  extra   {k}: actual {rows}")
        for k, e_list, a_list in sorted(differing, key=ksort)[:show]:
            if len(e_list) == 1 and len(a_list) == 1:
                d = _row_diff(e_list[0], a_list[0], rel_tol, abs_tol)
                cols = ", ".join(f"{c}: expected {ev!r} actual {av!r}" for c, (ev, av) in d.items())
                problems.append(f"  differ  {k}: {cols}")
            else:
                problems.append(
                    f"  differ  {k}: {len(e_list)} expected rows unmatched {e_list}; "
                    f"{len(a_list)} actual rows unmatched {a_list}"
                )
    return problems


def assert_tables_match(
    actual: dict[str, list[dict]],
    expected: dict[str, list[dict]],
    keys: dict[str, tuple[str, ...]] | None = None,
    rel_tol: float = 1e-9,
    abs_tol: float = 1e-9,
) -> None:
    """Raise AssertionError with a readable diff unless the tables match."""
    problems = tables_diff(actual, expected, keys or TABLE_KEYS, rel_tol, abs_tol)
    if problems:
        raise AssertionError("tables differ from the reference:\n" + "\n".join(problems))


def reconciliation_errors(
    tables: dict[str, list[dict]], rel_tol: float = 1e-9, abs_tol: float = 1e-9
) -> list[str]:
    """Check the contract's reconciliation invariant: per local date, the sum
    of total_kwh over consumption_per_product_per_day equals the sum over the
    total_consumption_half_hour rows whose interval_start_local is on that
    date. Returns a list of error messages (empty: reconciled)."""
    errors: list[str] = []
    for t in (PER_PRODUCT_DAY, TOTAL_HH):
        if t not in tables:
            errors.append(f"{t}: table missing")
    if errors:
        return errors
    per_day: dict[date, list[float]] = defaultdict(list)
    for r in tables[PER_PRODUCT_DAY]:
        d = _canon("date", r.get("date"))
        per_day[d].append(float(r.get("total_kwh") or 0.0))
    per_hh: dict[date, list[float]] = defaultdict(list)
    for r in tables[TOTAL_HH]:
        local = _canon("interval_start_local", r.get("interval_start_local"))
        d = local.date() if isinstance(local, datetime) else None
        per_hh[d].append(float(r.get("total_kwh") or 0.0))
    for d in sorted(per_day.keys() | per_hh.keys(), key=lambda x: (x is None, x or date.min)):
        a = math.fsum(per_day.get(d, []))
        b = math.fsum(per_hh.get(d, []))
        if not math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol):
            errors.append(
                f"{d}: consumption_per_product_per_day total {a!r} != total_consumption_half_hour total {b!r}"
            )
    return errors
