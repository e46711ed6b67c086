"""Dimensions from the SQLite database: read-only load, raw landing, conformed views.

The database is small and changes once a day, so it is read on the driver with
`sqlite3`, landed as `raw/agreement`, `raw/product`, `raw/meterpoint`, and turned
into two broadcastable DataFrames for the point-in-time join:
agreement *segments* (per meterpoint, non-overlapping date ranges, each with the
one agreement that wins there) and meterpoints (region).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    BooleanType,
    DataType,
    DoubleType,
    LongType,
    StringType,
    StructField,
    StructType,
)

from streaming import schemas, small_writes

log = logging.getLogger(__name__)

TABLES = ("agreement", "product", "meterpoint")
STAMPED = "agreement"  # its raw table's stamp tells whether the landing is complete
REQUIRED = {
    "agreement": (
        "agreement_id",
        "agreement_valid_from",
        "agreement_valid_to",
        "product_id",
        "meterpoint_id",
        "account_id",
    ),
    "product": ("display_name", "is_variable", "id", "product_id"),
    "meterpoint": ("region", "meterpoint_id"),
}
_TRUE = {"1", "true", "t", "yes", "y"}
_FALSE = {"0", "false", "f", "no", "n"}


class DimensionError(RuntimeError):
    """The dimension database cannot be used; the message says why."""


@dataclass(frozen=True)
class SourceTable:
    """One SQLite table as read: column names, declared types and rows."""

    name: str
    columns: tuple[str, ...]
    declared: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


@dataclass(frozen=True)
class Dimensions:
    """The three source tables and a fingerprint of their content."""

    tables: dict[str, SourceTable]
    fingerprint: str


@dataclass(frozen=True)
class Segment:
    """Dates [segment_from, segment_to) of a meterpoint covered by one agreement."""

    meterpoint_id: str
    segment_from: date
    segment_to: date | None
    agreement_id: int
    product_id: int | None
    product_display_name: str | None
    product_is_variable: bool | None
    account_id: int | None


def db_signature(db_path: str) -> tuple[int, int, int] | None:
    """A cheap change marker of the database file (inode, size, mtime), None if absent."""
    try:
        st = os.stat(db_path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def read_sqlite(db_path: str, attempts: int = 10, wait_seconds: float = 1.0) -> Dimensions:
    """Read the three tables read-only; a locked or mid-write database is retried."""
    if not Path(db_path).is_file():
        raise DimensionError(f"dimension database not found: {db_path}")
    last_error: Exception | None = None
    for attempt in range(1, attempts + 1):
        try:
            return _read_once(db_path)
        except sqlite3.OperationalError as exc:
            message = str(exc)
            if "no such table" in message:
                raise DimensionError(f"dimension database {db_path}: {message}") from exc
            last_error = exc
        except sqlite3.DatabaseError as exc:  # e.g. a file caught half-copied
            last_error = exc
        log.warning(
            "dimension database %s not readable (%s), retry %d/%d", db_path, last_error, attempt, attempts
        )
        time.sleep(wait_seconds)
    raise DimensionError(
        f"dimension database {db_path} still unreadable after {attempts} attempts: {last_error}"
    )


def _read_once(db_path: str) -> Dimensions:
    uri = f"file:{Path(db_path).resolve()}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=5)
    try:
        tables: dict[str, SourceTable] = {}
        for name in TABLES:
            info = conn.execute(f"PRAGMA table_info({name})").fetchall()
            if not info:
                raise DimensionError(
                    f"dimension database {db_path} has no table '{name}' (expected {', '.join(TABLES)})"
                )
            columns = tuple(r[1] for r in info)
            missing = [c for c in REQUIRED[name] if c not in columns]
            if missing:
                raise DimensionError(
                    f"dimension database {db_path}: table '{name}' lacks column(s) {', '.join(missing)}"
                )
            cols_sql = ", ".join(f'"{c}"' for c in columns)
            rows = tuple(conn.execute(f"SELECT {cols_sql} FROM {name} ORDER BY rowid"))
            tables[name] = SourceTable(name, columns, tuple(str(r[2]) for r in info), rows)
    finally:
        conn.close()
    digest = hashlib.sha256()
    for name in TABLES:
        t = tables[name]
        digest.update(json.dumps([name, t.columns, t.rows], default=str).encode())
    return Dimensions(tables=tables, fingerprint=digest.hexdigest())


# ---------------------------------------------------------------- raw landing


def _spark_type(declared: str, values: list[Any]) -> DataType:
    """The declared SQLite type as a Spark type, when every value fits it."""
    kind = declared.upper()
    present = [v for v in values if v is not None]
    if "INT" in kind and all(isinstance(v, int) for v in present):
        return LongType()
    if any(k in kind for k in ("REAL", "FLOA", "DOUB")) and all(isinstance(v, (int, float)) for v in present):
        return DoubleType()
    if "BOOL" in kind and all(isinstance(v, (int, bool)) and v in (0, 1) for v in present):
        return BooleanType()
    return StringType()


def _convert(value: Any, dtype: DataType) -> Any:
    if value is None:
        return None
    if isinstance(dtype, LongType):
        return int(value)
    if isinstance(dtype, DoubleType):
        return float(value)
    if isinstance(dtype, BooleanType):
        return bool(value)
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def raw_rows(table: SourceTable) -> tuple[StructType, list[tuple[Any, ...]]]:
    """A source table's schema (the SQLite columns, types from the declaration) and rows."""
    fields = []
    for i, (col, declared) in enumerate(zip(table.columns, table.declared, strict=True)):
        dtype = _spark_type(declared, [r[i] for r in table.rows])
        fields.append(StructField(col, dtype, True))
    schema = StructType(fields)
    rows = [tuple(_convert(v, f.dataType) for v, f in zip(row, fields, strict=True)) for row in table.rows]
    return schema, rows


def raw_dataframe(spark: SparkSession, table: SourceTable) -> DataFrame:
    """A source table as a DataFrame with the SQLite columns, types from the declaration."""
    schema, rows = raw_rows(table)
    return spark.createDataFrame(rows, schema)


def raw_arrow(table: SourceTable) -> pa.Table:
    """A source table as Arrow, in the schema `raw_dataframe` gives it."""
    schema, rows = raw_rows(table)
    arrow_schema = small_writes.arrow_schema(schema)
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in schema.fields]
    return pa.table(
        [pa.array(c, type=f.type) for c, f in zip(columns, arrow_schema, strict=True)], schema=arrow_schema
    )


def land_raw(spark: SparkSession, lake_table: Any, dims: Dimensions, writer: str = "spark") -> None:
    """Overwrite raw/<table> with the source rows; each refresh is one new Delta version.

    `lake_table` maps a table name such as `raw/agreement` to its location. The
    fingerprint goes into the commit's userMetadata so a restart can tell
    whether the database changed since it was last landed. `writer="delta-rs"`
    (a local lake): delta-rs commits the same rows, no Spark job.
    """
    from concurrent.futures import ThreadPoolExecutor

    meta = json.dumps({"source_fingerprint": dims.fingerprint})

    def land(name: str) -> None:
        if writer == "delta-rs":
            path = lake_table(f"raw/{name}")
            small_writes.overwrite(path, raw_arrow(dims.tables[name]), meta, overwrite_schema=True)
            return
        (
            raw_dataframe(spark, dims.tables[name])
            .write.format("delta")
            .mode("overwrite")
            .option("overwriteSchema", "true")
            .option("userMetadata", meta)
            .save(lake_table(f"raw/{name}"))
        )

    # A restart checks STAMPED's stamp (`landed_fingerprint`): it is landed last,
    # so a crash part-way has all three landed again.
    others = [name for name in TABLES if name != STAMPED]
    with ThreadPoolExecutor(max_workers=len(others)) as pool:
        list(pool.map(land, others))
    land(STAMPED)


def landed_metadata(spark: SparkSession, location: str, reader: str = "spark") -> dict[str, Any]:
    """The userMetadata (JSON) of the newest commit of a table that carries one
    (OPTIMIZE or VACUUM commits do not). `reader="delta-rs"` (a local lake):
    read from the log by delta-rs, no Spark job."""
    from delta.tables import DeltaTable

    if reader == "delta-rs":
        text = small_writes.newest_user_metadata(location)
    else:
        if not DeltaTable.isDeltaTable(spark, location):
            return {}
        rows = (
            DeltaTable.forPath(spark, location)
            .history(50)
            .filter("userMetadata IS NOT NULL")
            .orderBy(F.desc("version"))
            .select("userMetadata")
            .limit(1)
            .collect()
        )
        text = rows[0][0] if rows else None
    if text is None:
        return {}
    try:
        meta = json.loads(text)
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def landed_fingerprint(spark: SparkSession, location: str, reader: str = "spark") -> str | None:
    """The source fingerprint recorded with the newest landing of a raw dimension table."""
    value = landed_metadata(spark, location, reader).get("source_fingerprint")
    return str(value) if value else None


# ---------------------------------------------------------------- conformed


def parse_date(value: Any) -> date | None:
    """A `YYYY-MM-DD` date (a longer ISO timestamp is cut to its date), else None."""
    if isinstance(value, date):
        return value
    if not isinstance(value, str):
        return None
    try:
        return date.fromisoformat(value.strip()[:10])
    except ValueError:
        return None


def parse_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    return None


def parse_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


@dataclass(frozen=True)
class Agreement:
    agreement_id: int
    meterpoint_id: str
    valid_from: date
    valid_to: date | None
    product_id: int | None
    account_id: int | None


@dataclass(frozen=True)
class Product:
    product_id: int
    display_name: str | None
    is_variable: bool | None


def conform(
    dims: Dimensions,
) -> tuple[list[Agreement], dict[int, Product], dict[str, str | None], Counter[str]]:
    """Typed agreements, products by product_id and regions by meterpoint; problems counted."""
    problems: Counter[str] = Counter()
    products: dict[int, Product] = {}
    for row in sorted(dims.tables["product"].dicts(), key=lambda r: parse_int(r["id"]) or 0):
        pid = parse_int(row["product_id"])
        if pid is None:
            problems["product: product_id not an integer"] += 1
            continue
        if pid in products:
            problems["product: duplicate product_id (greatest id kept)"] += 1
        products[pid] = Product(pid, row["display_name"], parse_bool(row["is_variable"]))
    regions: dict[str, str | None] = {}
    for row in dims.tables["meterpoint"].dicts():
        mp = row["meterpoint_id"]
        if mp is None:
            problems["meterpoint: null meterpoint_id"] += 1
            continue
        mp = str(mp)
        if mp in regions and regions[mp] != row["region"]:
            problems["meterpoint: duplicate meterpoint_id (last row kept)"] += 1
        regions[mp] = row["region"]
    agreements: list[Agreement] = []
    seen_ids: set[int] = set()
    for row in dims.tables["agreement"].dicts():
        aid = parse_int(row["agreement_id"])
        valid_from = parse_date(row["agreement_valid_from"])
        raw_to = row["agreement_valid_to"]
        valid_to = None if raw_to is None or raw_to == "" else parse_date(raw_to)
        if aid is None:
            problems["agreement: agreement_id not an integer (ignored)"] += 1
            continue
        if row["meterpoint_id"] is None:
            problems["agreement: null meterpoint_id (ignored)"] += 1
            continue
        if valid_from is None or (raw_to not in (None, "") and valid_to is None):
            problems["agreement: unparseable date (ignored)"] += 1
            continue
        if aid in seen_ids:
            problems["agreement: duplicate agreement_id"] += 1
        seen_ids.add(aid)
        pid = parse_int(row["product_id"])
        if pid is None or pid not in products:
            problems["agreement: product not in product table"] += 1
        agreements.append(
            Agreement(aid, str(row["meterpoint_id"]), valid_from, valid_to, pid, parse_int(row["account_id"]))
        )
    return agreements, products, regions, problems


def _wins(a: Agreement) -> tuple[date, int, int, int]:
    """Contract: later valid_from, then greater agreement_id (then a stable tie-break)."""
    return (a.valid_from, a.agreement_id, a.product_id or 0, a.account_id or 0)


def agreement_segments(agreements: list[Agreement], products: dict[int, Product]) -> list[Segment]:
    """Non-overlapping date ranges per meterpoint, each with its winning agreement.

    Coverage is half-open (`valid_from <= d < valid_to`), so an agreement with
    `valid_from = valid_to` covers nothing; where several cover a date, the one
    with the later `valid_from`, then the greater `agreement_id`, wins.
    """
    by_meterpoint: dict[str, list[Agreement]] = defaultdict(list)
    for a in agreements:
        if a.valid_to is None or a.valid_to > a.valid_from:
            by_meterpoint[a.meterpoint_id].append(a)
    segments: list[Segment] = []
    for mp, items in sorted(by_meterpoint.items()):
        bounds = sorted({a.valid_from for a in items} | {a.valid_to for a in items if a.valid_to})
        ends: list[date | None] = [*bounds[1:], None]
        current: Segment | None = None
        for start, end in zip(bounds, ends, strict=True):
            covering = [
                a for a in items if a.valid_from <= start and (a.valid_to is None or a.valid_to > start)
            ]
            if not covering:
                current = None
                continue
            win = max(covering, key=_wins)
            if current is not None and current.agreement_id == win.agreement_id and _same(current, win):
                segments[-1] = current = Segment(**{**current.__dict__, "segment_to": end})
                continue
            product = products.get(win.product_id) if win.product_id is not None else None
            current = Segment(
                meterpoint_id=mp,
                segment_from=start,
                segment_to=end,
                agreement_id=win.agreement_id,
                product_id=win.product_id,
                product_display_name=product.display_name if product else None,
                product_is_variable=product.is_variable if product else None,
                account_id=win.account_id,
            )
            segments.append(current)
    return segments


def _same(segment: Segment, a: Agreement) -> bool:
    return segment.product_id == a.product_id and segment.account_id == a.account_id


@dataclass(frozen=True)
class Conformed:
    """What the join and the active-agreements table need, as small DataFrames."""

    segments_df: DataFrame
    meterpoints_df: DataFrame
    agreements_df: DataFrame
    fingerprint: str
    problems: dict[str, int]

    def unpersist(self) -> None:
        """Release the cached DataFrames (they are cached for reuse every batch)."""
        for df in (self.segments_df, self.meterpoints_df, self.agreements_df):
            df.unpersist()


AGREEMENTS = StructType(
    [
        StructField("agreement_id", LongType(), False),
        StructField("meterpoint_id", StringType(), False),
        StructField("valid_from", schemas.DateType(), False),
        StructField("valid_to", schemas.DateType(), True),
        StructField("product_id", LongType(), True),
        StructField("product_display_name", StringType(), True),
        StructField("product_is_variable", BooleanType(), True),
    ]
)


def conformed_dataframes(spark: SparkSession, dims: Dimensions) -> Conformed:
    """The conformed dimension DataFrames, cached (they are reused every micro-batch)."""
    agreements, products, regions, problems = conform(dims)
    segments = agreement_segments(agreements, products)
    segments_df = spark.createDataFrame(
        [
            (
                s.meterpoint_id,
                s.segment_from,
                s.segment_to,
                s.agreement_id,
                s.product_id,
                s.product_display_name,
                s.product_is_variable,
                s.account_id,
            )
            for s in segments
        ],
        schemas.AGREEMENT_SEGMENTS,
    )
    meterpoints_df = spark.createDataFrame(sorted(regions.items()), schemas.METERPOINTS)
    agreements_df = spark.createDataFrame(
        [
            (
                a.agreement_id,
                a.meterpoint_id,
                a.valid_from,
                a.valid_to,
                a.product_id,
                products[a.product_id].display_name if a.product_id in products else None,
                products[a.product_id].is_variable if a.product_id in products else None,
            )
            for a in agreements
        ],
        AGREEMENTS,
    )
    for df in (segments_df, meterpoints_df, agreements_df):
        df.cache()
    if problems:
        log.warning("dimension problems: %s", dict(problems))
    return Conformed(segments_df, meterpoints_df, agreements_df, dims.fingerprint, dict(problems))
