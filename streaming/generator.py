"""Generate realistic sample smart-meter readings files and the dimension database.

Standard library only. Output follows shared/CONTRACT.md: readings files
``{"columns": [...], "data": [[...], ...]}`` with naive Europe/London half-hour
starts, and a SQLite database with the case study's ``agreement``, ``product``
and ``meterpoint`` tables, seeded with the source-data quirks the pipeline must
handle (shared display names, product switches, zero-length agreements,
uncovered and unknown meterpoints, retries, corrections, backfills).

Everything is deterministic for a seed: file bytes, file modification times and
database rows. Reading values depend only on (seed, meterpoint, day), so a
reading has the same value whichever layout or delivery carries it.

    python -m streaming.generator --out data --meterpoints 100 --days 3 --start 2021-01-01
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

LOCAL_TZ = ZoneInfo("Europe/London")
COLUMNS: list[str] = ["interval_start", "consumption_delta", "meterpoint_id"]
REORDERED_COLUMNS: list[str] = ["meterpoint_id", "interval_start", "consumption_delta"]
EXTRA_COLUMNS: list[str] = [*COLUMNS, "quality"]
# One reading row: [interval_start, consumption_delta, meterpoint_id] in COLUMNS order.
Row = list[Any]
# agreement and product table rows, in their column order.
AgreementRow = tuple[int, str, str | None, int, str, int]
ProductRow = tuple[str, int, int, int]
LAYOUTS = ("per_meterpoint_day", "per_day")
READINGS_DIR = "readings"
DB_NAME = "case_study.db"
TS_FORMAT = "%Y-%m-%d %H:%M:%S"
HALF_HOUR = timedelta(minutes=30)
MIN_KWH = 0.02
MAX_KWH = 1.5
# Files of a day arrive between 07:00 and 07:50 local time the next morning;
# retries and corrections just before 08:00.
DELIVERY_TIME = time(7, 0)
DELIVERY_WINDOW_MS = 3_000_000
RETRY_OFFSET_S = 3300.0
CORRECTION_OFFSET_S = 3420.0

AGREEMENT_DDL = (
    "CREATE TABLE agreement (agreement_id INTEGER, agreement_valid_from TEXT, "
    "agreement_valid_to TEXT, product_id INTEGER, meterpoint_id TEXT, account_id INTEGER)"
)
PRODUCT_DDL = "CREATE TABLE product (display_name TEXT, is_variable INTEGER, id INTEGER, product_id INTEGER)"
METERPOINT_DDL = "CREATE TABLE meterpoint (region TEXT, meterpoint_id TEXT)"

# (product_id, display_name, is_variable). Several product_ids share a display
# name (tariff versions). product.id is a surrogate key numbered the other way
# round, so joining agreement.product_id to product.id gives wrong names.
PRODUCTS: list[tuple[int, str, int]] = [
    (1, "Agile Octopus", 1),
    (2, "Flexible Octopus", 1),
    (3, "Octopus 12M Fixed", 0),
    (4, "Octopus Go", 0),
    (5, "Agile Octopus", 1),
    (6, "Flexible Octopus", 1),
    (7, "Octopus Tracker", 1),
    (8, "Octopus 24M Fixed", 0),
]
# Weights of product_ids for ordinary agreements.
PRODUCT_WEIGHTS: list[int] = [10, 25, 15, 8, 12, 20, 5, 5]
SWITCH_FROM_PRODUCT = 3  # Octopus 12M Fixed (fixed) ...
SWITCH_TO_PRODUCT = 5  # ... to Agile Octopus (variable)
REGIONS: list[str] = [
    "Eastern England",
    "East Midlands",
    "London",
    "North Wales and Merseyside",
    "West Midlands",
    "North East",
    "North West",
    "Southern",
    "South East",
    "South Wales",
    "South West",
    "Yorkshire",
    "South Scotland",
    "North Scotland",
]

# Typical household kWh per half hour by local clock hour: low at night,
# a morning bump, an evening peak.
HOURLY_KWH: list[float] = [
    0.10, 0.085, 0.08, 0.07, 0.07, 0.08, 0.11, 0.18, 0.21, 0.17, 0.15, 0.14,
    0.16, 0.15, 0.13, 0.14, 0.19, 0.28, 0.32, 0.29, 0.25, 0.21, 0.16, 0.12,
]  # fmt: skip
MONTH_FACTOR: dict[int, float] = {
    1: 1.25, 2: 1.2, 3: 1.1, 4: 0.95, 5: 0.85, 6: 0.78,
    7: 0.76, 8: 0.78, 9: 0.85, 10: 0.98, 11: 1.12, 12: 1.24,
}  # fmt: skip
WEEKEND_FACTOR = 1.08

# Roles a meterpoint can play in the dimension data (see dimension_roles).
ROLE_NO_AGREEMENT = "no_agreement"
ROLE_ENDED_BEFORE_START = "ended_before_start"
ROLE_SWITCH = "switch"
ROLE_STARTS_ON_START = "starts_on_start"
ROLE_ENDS_IN_RANGE = "ends_in_range"
ROLE_OVERLAP = "overlap"
ROLE_ZERO_LENGTH = "zero_length"
ROLE_NOT_IN_METERPOINT_TABLE = "not_in_meterpoint_table"
ROLE_DORMANT = "dormant"
# Roles that decide a meterpoint's agreements (the others add to them or to other tables).
EXCLUSIVE_ROLES = (
    ROLE_NO_AGREEMENT,
    ROLE_ENDED_BEFORE_START,
    ROLE_SWITCH,
    ROLE_STARTS_ON_START,
    ROLE_ENDS_IN_RANGE,
    ROLE_OVERLAP,
)


class GeneratorError(ValueError):
    """A sample specification the generator cannot honour."""


@dataclass(frozen=True)
class SampleSpec:
    """What write_sample produces."""

    meterpoints: int = 100
    days: int = 3
    start: date = date(2021, 1, 1)
    seed: int = 42
    # "per_meterpoint_day", or "per_day": one file per day holding all meterpoints
    files: str = "per_meterpoint_day"
    # every Nth file pretty-printed (indent=2), the others on one line; 0 = never
    pretty_every: int = 7


# --------------------------------------------------------------------------
# Meterpoints and time
# --------------------------------------------------------------------------
def meterpoint_ids(n: int, seed: int) -> list[str]:
    """n distinct 10-hex-char meterpoint ids, the same for a seed (a prefix-stable sequence)."""
    rng = random.Random(f"meterpoints:{seed}")
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < n:
        mp = f"{rng.getrandbits(40):010x}"
        if mp not in seen:
            seen.add(mp)
            ids.append(mp)
    return ids


@lru_cache(maxsize=512)
def local_interval_starts(day: date) -> tuple[str, ...]:
    """Naive local half-hour starts of a Europe/London day in time order (46, 48 or 50)."""
    start_utc = datetime.combine(day, time(0), LOCAL_TZ).astimezone(UTC)
    end_utc = datetime.combine(day + timedelta(days=1), time(0), LOCAL_TZ).astimezone(UTC)
    starts: list[str] = []
    instant = start_utc
    while instant < end_utc:
        starts.append(instant.astimezone(LOCAL_TZ).strftime(TS_FORMAT))
        instant += HALF_HOUR
    return tuple(starts)


@lru_cache(maxsize=512)
def _day_profile(day: date) -> tuple[tuple[str, float], ...]:
    """(interval_start, typical kWh) for each half hour of a day: the shape shared by all meterpoints."""
    factor = MONTH_FACTOR[day.month] * (WEEKEND_FACTOR if day.weekday() >= 5 else 1.0)
    profile = []
    for ts in local_interval_starts(day):
        hour, minute = int(ts[11:13]), int(ts[14:16])
        # Interpolate between hours so the half hours are not a staircase.
        nxt = HOURLY_KWH[(hour + 1) % 24]
        base = HOURLY_KWH[hour] if minute == 0 else (HOURLY_KWH[hour] + nxt) / 2
        profile.append((ts, base * factor))
    return tuple(profile)


@lru_cache(maxsize=65536)
def _meterpoint_scale(meterpoint_id: str) -> float:
    """Household size factor (0.5 to 1.7) fixed by the meterpoint id."""
    return 0.5 + (int(meterpoint_id, 16) % 1201) / 1000


def reading_rng(seed: int, meterpoint_id: str, day: date) -> random.Random:
    """The random stream of one meterpoint-day, independent of file layout and delivery."""
    return random.Random(f"{seed}:{meterpoint_id}:{day.isoformat()}")


def _clamp_kwh(value: float) -> float:
    """A kWh value within the realistic range, rounded to 3 decimals."""
    return round(min(MAX_KWH, max(MIN_KWH, value)), 3)


def day_rows(meterpoint_id: str, day: date, rng: random.Random) -> list[Row]:
    """Rows [interval_start, consumption_delta, meterpoint_id] of one meterpoint's local day."""
    scale = _meterpoint_scale(meterpoint_id)
    rnd = rng.random
    rows: list[Row] = []
    for ts, base in _day_profile(day):
        value = base * scale * (0.75 + 0.5 * rnd())
        if rnd() < 0.04:  # a kettle, an oven or a washing machine
            value += 0.25 + 0.6 * rnd()
        # _clamp_kwh inlined: this line runs millions of times for large samples
        kwh = round(MAX_KWH if value > MAX_KWH else max(value, MIN_KWH), 3)
        rows.append([ts, kwh, meterpoint_id])
    return rows


def _meterpoint_day_rows(seed: int, meterpoint_id: str, day: date) -> list[Row]:
    """The deterministic rows of one meterpoint-day for a seed."""
    return day_rows(meterpoint_id, day, reading_rng(seed, meterpoint_id, day))


def delivery_mtime(day: date, offset_seconds: float = 0.0) -> float:
    """Modification time of a delivery of `day`: 07:00 local the next morning plus an offset."""
    morning = datetime.combine(day + timedelta(days=1), DELIVERY_TIME, LOCAL_TZ)
    return morning.timestamp() + offset_seconds


# --------------------------------------------------------------------------
# Readings files
# --------------------------------------------------------------------------
def _with_columns(rows: list[Row], columns: list[str]) -> list[Row]:
    """Rows in canonical COLUMNS order rearranged for `columns` (extra 'quality' is 'A')."""
    if columns == COLUMNS:
        return rows
    position = {name: i for i, name in enumerate(COLUMNS)}
    out = []
    for row in rows:
        out.append([row[position[c]] if c in position else "A" for c in columns])
    return out


def write_readings_file(
    path: Path,
    rows: list[Row],
    columns: list[str] | None = None,
    pretty: bool = False,
    mtime: float | None = None,
) -> Path:
    """Write a readings file atomically (hidden temp name, then rename), optionally with an mtime."""
    path = Path(path)
    document = {"columns": list(columns or COLUMNS), "data": rows}
    text = json.dumps(document, indent=2) if pretty else json.dumps(document)
    return _place_bytes(path, text.encode("utf-8"), mtime)


def _place_bytes(path: Path, payload: bytes, mtime: float | None) -> Path:
    """Write bytes under `.<name>.tmp`, set its mtime, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(payload)
        if mtime is not None:
            # Set the time before the rename, so the visible file never has a wrong
            # one, and through the open descriptor (one path lookup fewer per file).
            handle.flush()
            os.utime(handle.fileno(), ns=_mtime_ns(mtime))
    os.replace(tmp, path)
    return path


def _mtime_ns(mtime: float) -> tuple[int, int]:
    """(atime, mtime) in ns; whole seconds stay exact (mtime * 1e9 exceeds a double's precision)."""
    seconds = int(mtime // 1)
    ns = seconds * 1_000_000_000 + round((mtime - seconds) * 1_000_000_000)
    return ns, ns


def _copy_file(source: Path, target: Path, mtime: float) -> Path:
    """Re-deliver a file byte for byte under a new name (a retried transfer)."""
    return _place_bytes(target, source.read_bytes(), mtime)


def _regular_name(day: date, meterpoint_id: str | None, tag: str = "") -> str:
    """Name of a regular delivery file: per meterpoint-day or per day."""
    stem = f"readings_{day.isoformat()}"
    if meterpoint_id is not None:
        stem += f"_{meterpoint_id}"
    if tag:
        stem += f"_{tag}"
    return f"{stem}.json"


def _is_pretty(file_index: int, pretty_every: int) -> bool:
    """Whether the file_index-th file written is pretty-printed."""
    return pretty_every > 0 and file_index % pretty_every == 0


def _step_ms(files_per_day: int) -> int:
    """Milliseconds between consecutive files of one morning's delivery."""
    return max(1, min(1000, DELIVERY_WINDOW_MS // max(1, files_per_day)))


def _corrected_rows(rows: list[Row], rng: random.Random) -> list[Row]:
    """The same readings with new, different values (a meter re-read)."""
    out = []
    for ts, old, mp in rows:
        new = _clamp_kwh(old * rng.uniform(1.3, 1.9) + 0.01)
        if new == old:
            new = _clamp_kwh(old * 0.6)
        out.append([ts, new, mp])
    return out


def _check_layout(spec: SampleSpec) -> None:
    """Reject specs the generator cannot write."""
    if spec.files not in LAYOUTS:
        raise GeneratorError(f"files must be one of {', '.join(LAYOUTS)}, not {spec.files!r}")
    if spec.meterpoints < 1 or spec.days < 1:
        raise GeneratorError("meterpoints and days must be at least 1")
    if spec.pretty_every < 0:
        raise GeneratorError("pretty_every must be 0 (never) or positive")


def clean_readings_dir(readings_dir: Path) -> int:
    """Delete stale *.json files and leftover hidden temp files; return how many were removed."""
    removed = 0
    if not readings_dir.is_dir():
        return removed
    for stale in [*readings_dir.glob("*.json"), *readings_dir.glob(".*.tmp")]:
        stale.unlink()
        removed += 1
    return removed


# --------------------------------------------------------------------------
# Dimension database
# --------------------------------------------------------------------------
def _quirk_count(n: int, fraction: float, minimum: int = 1) -> int:
    """How many of n meterpoints get a quirk: about `fraction`, at least `minimum`."""
    return max(minimum, round(n * fraction))


def dimension_roles(ids: list[str], seed: int) -> dict[str, list[str]]:
    """Which meterpoints carry which dimension quirk (the plan write_dimensions follows)."""
    rng = random.Random(f"roles:{seed}")
    order = list(ids)
    rng.shuffle(order)
    n = len(ids)
    uncovered = _quirk_count(n, 0.05, minimum=2)
    exclusive = [
        (ROLE_NO_AGREEMENT, (uncovered + 1) // 2),
        (ROLE_ENDED_BEFORE_START, uncovered // 2),
        (ROLE_SWITCH, _quirk_count(n, 0.02)),
        (ROLE_STARTS_ON_START, _quirk_count(n, 0.02)),
        (ROLE_ENDS_IN_RANGE, _quirk_count(n, 0.02)),
        (ROLE_OVERLAP, 1),
    ]
    roles: dict[str, list[str]] = {}
    taken = 0
    for role, count in exclusive:
        roles[role] = order[taken : taken + count]
        taken += len(roles[role])
    ordinary = order[taken:]
    # Extra zero-length agreements go to meterpoints with an ordinary covering one.
    roles[ROLE_ZERO_LENGTH] = ordinary[: _quirk_count(n, 0.03)]
    absent_rng = random.Random(f"absent:{seed}")
    absent_count = _quirk_count(n, 0.02) if n >= 10 else 0
    roles[ROLE_NOT_IN_METERPOINT_TABLE] = sorted(absent_rng.sample(ids, absent_count))
    dormant_rng = random.Random(f"dormant:{seed}")
    known = set(ids)
    dormant: list[str] = []
    while len(dormant) < _quirk_count(n, 0.02):
        mp = f"{dormant_rng.getrandbits(40):010x}"
        if mp not in known:
            known.add(mp)
            dormant.append(mp)
    roles[ROLE_DORMANT] = dormant
    return roles


def _product_rows() -> list[ProductRow]:
    """product table rows (display_name, is_variable, id, product_id)."""
    top = len(PRODUCTS) + 1
    return [(name, variable, top - pid, pid) for pid, name, variable in PRODUCTS]


# (valid_from, valid_to, product_id, meterpoint_id, account_id) before ids are given.
_Plan = tuple[date, date | None, int, str, int]


def _random_product(rng: random.Random) -> int:
    """A product_id drawn with realistic weights."""
    return rng.choices([pid for pid, _, _ in PRODUCTS], PRODUCT_WEIGHTS)[0]


def _days_before(start: date, rng: random.Random, lo: int, hi: int) -> date:
    """A date between lo and hi days before start."""
    return start - timedelta(days=rng.randint(lo, hi))


def _plans_for(
    role: str | None, mp: str, account: int, start: date, days: int, rng: random.Random
) -> list[_Plan]:
    """The agreements of one meterpoint playing `role` (None: an ordinary one)."""
    one_day = timedelta(days=1)
    if role == ROLE_NO_AGREEMENT:
        return []
    if role == ROLE_ENDED_BEFORE_START:
        ended = _days_before(start, rng, 5, 60)
        began = _days_before(start, rng, 300, 700)
        return [(began, ended, _random_product(rng), mp, account)]
    if role == ROLE_SWITCH:
        # Half-open ranges: the switch day itself belongs to the second agreement.
        switch_on = start + one_day
        return [
            (start - 30 * one_day, switch_on, SWITCH_FROM_PRODUCT, mp, account),
            (switch_on, None, SWITCH_TO_PRODUCT, mp, account),
        ]
    if role == ROLE_STARTS_ON_START:
        return [(start, None, _random_product(rng), mp, account)]
    if role == ROLE_ENDS_IN_RANGE:
        began = _days_before(start, rng, 100, 600)
        ends = start + max(1, days // 2) * one_day
        return [(began, ends, _random_product(rng), mp, account)]
    if role == ROLE_OVERLAP:
        # Bad source data: two open-ended agreements cover the range.
        return [
            (start - 100 * one_day, None, 2, mp, account),
            (start - 20 * one_day, None, 7, mp, account),
        ]
    current_from = _days_before(start, rng, 1, 900)
    plans: list[_Plan] = []
    if rng.random() < 0.2:  # an earlier agreement that ended when this one began
        earlier_from = current_from - rng.randint(180, 700) * one_day
        plans.append((earlier_from, current_from, _random_product(rng), mp, account))
    plans.append((current_from, None, _random_product(rng), mp, account))
    return plans


def _agreement_rows(ids: list[str], start: date, days: int, seed: int) -> list[AgreementRow]:
    """agreement table rows with the quirks of dimension_roles, ids rising with valid_from."""
    rng = random.Random(f"agreements:{seed}")
    roles = dimension_roles(ids, seed)
    role_of = {mp: role for role, mps in roles.items() if role in EXCLUSIVE_ROLES for mp in mps}
    zero_length = {mp: i for i, mp in enumerate(roles[ROLE_ZERO_LENGTH])}
    plans: list[_Plan] = []
    for mp in [*ids, *roles[ROLE_DORMANT]]:
        account = rng.randint(10_000_000, 99_999_999)
        plans.extend(_plans_for(role_of.get(mp), mp, account, start, days, rng))
        if mp in zero_length:
            # The first falls on start itself, the as-of date of the case study.
            on = start if zero_length[mp] % 2 == 0 else _days_before(start, rng, 1, 30)
            plans.append((on, on, _random_product(rng), mp, account))
    order = sorted(range(len(plans)), key=lambda i: (plans[i][0], plans[i][3], i))
    agreement_id = {plan: 10_001 + rank for rank, plan in enumerate(order)}
    overlap = [i for i, plan in enumerate(plans) if plan[3] in roles[ROLE_OVERLAP]]
    if len(overlap) == 2:
        # The later agreement gets the smaller id: valid_from, not the id, must decide.
        first, second = overlap
        agreement_id[first], agreement_id[second] = (
            agreement_id[second],
            agreement_id[first],
        )
    return sorted(
        (
            agreement_id[i],
            valid_from.isoformat(),
            valid_to.isoformat() if valid_to else None,
            product_id,
            mp,
            account,
        )
        for i, (valid_from, valid_to, product_id, mp, account) in enumerate(plans)
    )


def _meterpoint_rows(ids: list[str], seed: int) -> list[tuple[str, str]]:
    """meterpoint table rows (region, meterpoint_id): readings' meterpoints minus ~2%, plus dormant ones."""
    roles = dimension_roles(ids, seed)
    absent = set(roles[ROLE_NOT_IN_METERPOINT_TABLE])
    rng = random.Random(f"regions:{seed}")
    listed = sorted(mp for mp in [*ids, *roles[ROLE_DORMANT]] if mp not in absent)
    return [(rng.choice(REGIONS), mp) for mp in listed]


def _build_db(
    path: Path,
    agreements: list[AgreementRow],
    products: list[ProductRow],
    meterpoints: list[tuple[str, str]],
) -> None:
    """Create a fresh database file with the three case-study tables."""
    path.unlink(missing_ok=True)
    con = sqlite3.connect(path)
    try:
        con.execute(AGREEMENT_DDL)
        con.execute(PRODUCT_DDL)
        con.execute(METERPOINT_DDL)
        con.executemany("INSERT INTO agreement VALUES (?, ?, ?, ?, ?, ?)", agreements)
        con.executemany("INSERT INTO product VALUES (?, ?, ?, ?)", products)
        con.executemany("INSERT INTO meterpoint VALUES (?, ?)", meterpoints)
        con.commit()
    finally:
        con.close()


def write_dimensions(
    db_path: Path,
    ids: list[str],
    start: date,
    days: int,
    seed: int,
    *,
    onboard_on: date | None = None,
) -> None:
    """Replace the SQLite database atomically with deterministic, quirky dimension tables.

    onboard_on: also give the first meterpoint without any agreement a new
    open-ended one from that date (what a daily refresh adds).
    """
    db_path = Path(db_path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    agreements = _agreement_rows(ids, start, days, seed)
    newcomers = dimension_roles(ids, seed)[ROLE_NO_AGREEMENT]
    if onboard_on is not None and newcomers:
        next_id = max((row[0] for row in agreements), default=10_000) + 1
        agreements.append((next_id, onboard_on.isoformat(), None, 1, newcomers[0], 12_345_678))
    tmp = db_path.with_name(f".{db_path.name}.tmp")
    _build_db(tmp, agreements, _product_rows(), _meterpoint_rows(ids, seed))
    # A rename, so a reader holding the old file open keeps a consistent snapshot.
    os.replace(tmp, db_path)


# --------------------------------------------------------------------------
# A whole sample
# --------------------------------------------------------------------------
class _Tally:
    """Expected distinct readings and kWh per local date (after duplicates and corrections)."""

    def __init__(self) -> None:
        self.by_date: dict[str, dict[str, Any]] = {}
        self.files = 0
        self.rows = 0

    def wrote(self, rows: list[Row]) -> None:
        """Count a file's rows as delivered."""
        self.files += 1
        self.rows += len(rows)

    def add(self, day: date, meterpoint_id: str, rows: list[Row]) -> None:
        """Count one meterpoint-day's new readings (canonical column order)."""
        entry = self.by_date.setdefault(
            day.isoformat(), {"meterpoints": set(), "readings": 0, "total_kwh": 0.0}
        )
        entry["meterpoints"].add(meterpoint_id)
        entry["readings"] += len(rows)
        entry["total_kwh"] += sum(row[1] for row in rows)

    def replace(self, old: list[Row], new: list[Row]) -> None:
        """Account for corrected values."""
        for (ts, old_kwh, _), (_, new_kwh, _) in zip(old, new, strict=True):
            self.by_date[ts[:10]]["total_kwh"] += new_kwh - old_kwh

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per local date: distinct meterpoints, distinct readings, total kWh."""
        return {
            day: {
                "meterpoints": len(entry["meterpoints"]),
                "readings": entry["readings"],
                "total_kwh": round(entry["total_kwh"], 3),
            }
            for day, entry in sorted(self.by_date.items())
        }


def _columns_for(day_index: int, mp_index: int, spec: SampleSpec) -> list[str]:
    """Column layout of a regular file: the last day carries the reordered and extra-column files."""
    if day_index != spec.days - 1:
        return COLUMNS
    if spec.files == "per_day":
        return REORDERED_COLUMNS
    if mp_index == 1:
        return REORDERED_COLUMNS
    if mp_index == 2:
        return EXTRA_COLUMNS
    return COLUMNS


def write_sample(out_dir: Path, spec: SampleSpec) -> dict[str, Any]:
    """Write out_dir/readings/*.json and out_dir/case_study.db; return a summary.

    Stale readings files are removed first, so the folder is exactly the sample.
    With days > 1 the start date gets only plain files (no retry, correction or
    odd columns), so its totals are easy to check; quirks land on later days and
    before start. summary["dates"] holds the expected distinct readings and kWh
    per local date after duplicates and corrections.
    """
    _check_layout(spec)
    out_dir = Path(out_dir)
    readings_dir = out_dir / READINGS_DIR
    readings_dir.mkdir(parents=True, exist_ok=True)
    clean_readings_dir(readings_dir)
    ids = meterpoint_ids(spec.meterpoints, spec.seed)
    db_path = out_dir / DB_NAME
    write_dimensions(db_path, ids, spec.start, spec.days, spec.seed)

    tally = _Tally()
    per_day = spec.files == "per_day"
    step = _step_ms(1 if per_day else len(ids))
    file_index = 0
    quirks: dict[str, str | None] = {
        "retry": None,
        "correction": None,
        "backfill": None,
        "reordered_columns": None,
        "extra_column": None,
    }
    for day_index in range(spec.days):
        day = spec.start + timedelta(days=day_index)
        day_all: list[Row] = []
        for mp_index, mp in enumerate(ids):
            rows = _meterpoint_day_rows(spec.seed, mp, day)
            tally.add(day, mp, rows)
            if per_day:
                day_all.extend(rows)
                continue
            columns = _columns_for(day_index, mp_index, spec)
            path = readings_dir / _regular_name(day, mp)
            write_readings_file(
                path,
                _with_columns(rows, columns),
                columns,
                pretty=_is_pretty(file_index, spec.pretty_every),
                mtime=delivery_mtime(day, mp_index * step / 1000),
            )
            tally.wrote(rows)
            file_index += 1
            _note_layout(quirks, columns, path)
        if per_day:
            columns = _columns_for(day_index, 0, spec)
            path = readings_dir / _regular_name(day, None)
            write_readings_file(
                path,
                _with_columns(day_all, columns),
                columns,
                pretty=_is_pretty(file_index, spec.pretty_every),
                mtime=delivery_mtime(day),
            )
            tally.wrote(day_all)
            file_index += 1
            _note_layout(quirks, columns, path)

    last_day = spec.start + timedelta(days=spec.days - 1)
    retry_day = spec.start + timedelta(days=min(1, spec.days - 1))
    retry_source = readings_dir / _regular_name(retry_day, None if per_day else ids[0])
    retry = _copy_file(
        retry_source,
        readings_dir / f"retry_{retry_source.name}",
        delivery_mtime(last_day, RETRY_OFFSET_S),
    )
    tally.wrote(json.loads(retry.read_bytes())["data"])
    quirks["retry"] = retry.name

    corrected_mp = ids[len(ids) // 2]
    original = _meterpoint_day_rows(spec.seed, corrected_mp, last_day)[34:38]
    corrected = _corrected_rows(original, random.Random(f"correction:{spec.seed}"))
    correction = write_readings_file(
        readings_dir / f"correction_{last_day.isoformat()}_{corrected_mp}.json",
        corrected,
        mtime=delivery_mtime(last_day, CORRECTION_OFFSET_S),
    )
    tally.wrote(corrected)
    tally.replace(original, corrected)
    quirks["correction"] = correction.name

    backfill_days = [spec.start - timedelta(days=d) for d in (40, 39, 38)]
    backfill = _write_backfill(readings_dir, ids[: min(3, len(ids))], backfill_days, spec, "", tally)
    quirks["backfill"] = backfill.name

    roles = dimension_roles(ids, spec.seed)
    return {
        "out_dir": str(out_dir),
        "readings_dir": str(readings_dir),
        "db_path": str(db_path),
        "spec": {**asdict(spec), "start": spec.start.isoformat()},
        "files": tally.files,
        "readings": tally.rows,
        "quirk_files": quirks,
        "corrected": {
            "meterpoint_id": corrected_mp,
            "interval_starts": [row[0] for row in corrected],
        },
        "dates": tally.summary(),
        "roles": roles,
    }


def _note_layout(quirks: dict[str, str | None], columns: list[str], path: Path) -> None:
    """Remember the first file written with reordered or extra columns."""
    if columns == REORDERED_COLUMNS and quirks["reordered_columns"] is None:
        quirks["reordered_columns"] = path.name
    elif columns == EXTRA_COLUMNS and quirks["extra_column"] is None:
        quirks["extra_column"] = path.name


def _write_backfill(
    readings_dir: Path,
    mps: list[str],
    days: list[date],
    spec: SampleSpec,
    tag: str,
    tally: _Tally | None,
) -> Path:
    """One file of old days' readings, with an mtime as old as those days (copied with times kept)."""
    rows: list[Row] = []
    for day in days:
        for mp in mps:
            mp_rows = _meterpoint_day_rows(spec.seed, mp, day)
            rows.extend(mp_rows)
            if tally is not None:
                tally.add(day, mp, mp_rows)
    prefix = f"backfill_{tag}_" if tag else "backfill_"
    path = readings_dir / f"{prefix}{days[0].isoformat()}_{days[-1].isoformat()}.json"
    write_readings_file(path, rows, pretty=True, mtime=delivery_mtime(days[-1]))
    if tally is not None:
        tally.wrote(rows)
    return path


def write_delivery(
    readings_dir: Path, db_path: Path | None, spec: SampleSpec, day_index: int, tag: str
) -> list[Path]:
    """Write the next delivery: day start+day_index for all meterpoints, a retry, a correction, a backfill.

    All names contain `tag` and are new. Reading values are those write_sample
    would give the same (meterpoint, day). If db_path is given the database is
    replaced, with the first meterpoint lacking an agreement onboarded from the
    delivered day (a daily dimension refresh).
    """
    _check_layout(spec)
    if not tag:
        raise GeneratorError("a delivery needs a non-empty tag to make its file names new")
    readings_dir = Path(readings_dir)
    readings_dir.mkdir(parents=True, exist_ok=True)
    ids = meterpoint_ids(spec.meterpoints, spec.seed)
    day = spec.start + timedelta(days=day_index)
    written: list[Path] = []
    per_day = spec.files == "per_day"
    if per_day:
        rows = [row for mp in ids for row in _meterpoint_day_rows(spec.seed, mp, day)]
        path = readings_dir / _regular_name(day, None, tag)
        written.append(
            write_readings_file(
                path,
                rows,
                pretty=_is_pretty(0, spec.pretty_every),
                mtime=delivery_mtime(day),
            )
        )
    else:
        step = _step_ms(len(ids))
        for mp_index, mp in enumerate(ids):
            path = readings_dir / _regular_name(day, mp, tag)
            rows = _meterpoint_day_rows(spec.seed, mp, day)
            pretty = _is_pretty(mp_index, spec.pretty_every)
            written.append(
                write_readings_file(
                    path,
                    rows,
                    pretty=pretty,
                    mtime=delivery_mtime(day, mp_index * step / 1000),
                )
            )

    earlier = spec.start + timedelta(days=max(0, day_index - 1))
    written.append(_write_retry(readings_dir, earlier, None if per_day else ids[0], spec, tag, day))

    corrected_mp = ids[-1]
    original = _meterpoint_day_rows(spec.seed, corrected_mp, earlier)[36:39]
    corrected = _corrected_rows(original, random.Random(f"correction:{spec.seed}:{tag}"))
    name = f"correction_{tag}_{earlier.isoformat()}_{corrected_mp}.json"
    written.append(
        write_readings_file(
            readings_dir / name,
            corrected,
            mtime=delivery_mtime(day, CORRECTION_OFFSET_S),
        )
    )

    first_old = spec.start - timedelta(days=50 + 2 * day_index)
    backfill_days = [first_old, first_old + timedelta(days=1)]
    written.append(_write_backfill(readings_dir, ids[-2:], backfill_days, spec, tag, None))

    if db_path is not None:
        write_dimensions(db_path, ids, spec.start, spec.days, spec.seed, onboard_on=day)
    return written


def _write_retry(
    readings_dir: Path,
    earlier: date,
    meterpoint_id: str | None,
    spec: SampleSpec,
    tag: str,
    day: date,
) -> Path:
    """Re-deliver an earlier day's file under a new name: a byte copy if it is on disk, else regenerated."""
    pattern = _regular_name(earlier, meterpoint_id).removesuffix(".json") + "*.json"
    existing = sorted(readings_dir.glob(pattern))
    target_stem = _regular_name(earlier, meterpoint_id).removesuffix(".json")
    target = readings_dir / f"retry_{tag}_{target_stem}.json"
    mtime = delivery_mtime(day, RETRY_OFFSET_S)
    if existing:
        return _copy_file(existing[0], target, mtime)
    mps = [meterpoint_id] if meterpoint_id else meterpoint_ids(spec.meterpoints, spec.seed)
    rows = [row for mp in mps for row in _meterpoint_day_rows(spec.seed, mp, earlier)]
    return write_readings_file(target, rows, mtime=mtime)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------
def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Flags of `python -m streaming.generator`."""
    parser = argparse.ArgumentParser(
        prog="python -m streaming.generator",
        description="Write sample readings files and the dimension database.",
    )
    defaults = SampleSpec()
    parser.add_argument("--out", type=Path, default=Path("data"), help="output folder (default: data)")
    parser.add_argument("--meterpoints", type=int, default=defaults.meterpoints)
    parser.add_argument("--days", type=int, default=defaults.days)
    parser.add_argument(
        "--start",
        type=date.fromisoformat,
        default=defaults.start,
        help="first local date, YYYY-MM-DD",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--files", choices=LAYOUTS, default=defaults.files)
    parser.add_argument("--pretty-every", type=int, default=defaults.pretty_every)
    return parser.parse_args(argv)


def _printable(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary with long meterpoint lists cut short for the terminal."""
    roles = {
        role: mps if len(mps) <= 5 else [*mps[:5], f"... {len(mps)} in all"]
        for role, mps in summary["roles"].items()
    }
    return {**summary, "roles": roles}


def main(argv: list[str] | None = None) -> int:
    """Generate a sample and print its summary as JSON."""
    args = _parse_args(argv)
    spec = SampleSpec(
        meterpoints=args.meterpoints,
        days=args.days,
        start=args.start,
        seed=args.seed,
        files=args.files,
        pretty_every=args.pretty_every,
    )
    try:
        summary = write_sample(args.out, spec)
    except GeneratorError as error:
        raise SystemExit(f"generator: {error}") from error
    print(json.dumps(_printable(summary), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
