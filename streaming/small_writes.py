"""Small writes without a Spark job: Spark computes the rows, delta-rs commits them.

A one-file micro-batch writes a few dozen raw and staging rows and a few
hundred presentation rows. Through Spark's Delta writer each of those six
commits rebuilds the table's snapshot and runs several Spark jobs (about 1 s of
CPU a table on 2 cores); delta-rs (the `deltalake` package) commits the same
rows to the same table in about 10 ms. The rows come to the driver as Arrow,
so only small writes take this path: raw and staging writes of at most
`MAX_ROWS` rows, presentation refreshes of at most `MAX_DATES` dates; the
driver's memory does not grow with the input. Both writers follow the Delta
protocol: Spark reads, OPTIMIZEs and VACUUMs what delta-rs wrote, and the other
way round, and they record idempotent appends (app id, batch id) alike.

Used for lakes on a local (or mounted) file system. delta-rs names object
stores differently (`s3://`, not `s3a://`) and needs its own credentials, so a
lake given as a URI is written by Spark.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta

import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import DateType, StructType

# Larger writes go through Spark: a presentation refresh of more local dates
# would bring dates x 48 x products rows to the driver, a raw or staging write
# of more rows a backfill's worth.
MAX_DATES = 31
MAX_ROWS = 100_000


def is_local(path: str) -> bool:
    """A plain path or a `file:` URI (delta-rs writes these); other schemes are not."""
    return "://" not in path or path.startswith("file:")


def local_path(path: str) -> str:
    """`file:/a/b` or `file:///a/b` -> `/a/b`; a plain path is kept."""
    if path.startswith("file:"):
        return "/" + path[len("file:") :].lstrip("/")
    return path


def date_predicate(column: str, column_type: str, dates: Sequence[date], quote: bool = True) -> str:
    """A delta-rs (DataFusion SQL) predicate selecting the rows of the local `dates`.

    `column_type` is `date` (compared with the dates) or `timestamp` (a local
    wall-clock time: compared with each date's midnight to the next's). Runs of
    consecutive dates become one range, so file statistics can prune.
    `quote=False` keeps a qualified name such as `t.reading_date` as it is.
    """
    if column_type not in ("date", "timestamp"):
        raise ValueError(f"column_type must be 'date' or 'timestamp', got {column_type!r}")
    if not dates:
        raise ValueError("no dates to select")
    days = sorted(set(dates))
    runs: list[tuple[date, date]] = []  # [first, end) of each run of consecutive days
    for day in days:
        if runs and runs[-1][1] == day:
            runs[-1] = (runs[-1][0], day + timedelta(days=1))
        else:
            runs.append((day, day + timedelta(days=1)))

    def literal(day: date) -> str:
        return f"'{day.isoformat()}'" if column_type == "date" else f"'{day.isoformat()} 00:00:00'"

    quoted = '"' + column.replace('"', '""') + '"' if quote else column
    return " OR ".join(f"({quoted} >= {literal(first)} AND {quoted} < {literal(end)})" for first, end in runs)


def arrow_schema(schema: StructType) -> pa.Schema:
    """The table's schema in Arrow: TIMESTAMP as UTC instants, NOT NULL kept."""
    return to_arrow_schema(schema, timezone="UTC")


def replace_dates(
    path: str,
    fresh_df: DataFrame,
    schema: StructType,
    date_column: str,
    dates: Sequence[date],
    append: bool = False,
) -> None:
    """Make the rows of the table at `path` for `dates` equal to `fresh_df`, in one commit.

    `fresh_df` is in the table's columns. delta-rs removes the rows the
    predicate selects (rewriting files that hold other dates too) and adds the
    fresh ones atomically, and refuses a fresh row outside `dates`. `append=True`:
    the caller knows the table holds no row of `dates`.
    """
    from deltalake import write_deltalake

    target = arrow_schema(schema)
    data = fresh_df.toArrow().select(target.names).cast(target)
    if append:
        write_deltalake(local_path(path), data, mode="append")
        return
    column_type = "date" if isinstance(schema[date_column].dataType, DateType) else "timestamp"
    write_deltalake(
        local_path(path), data, mode="overwrite", predicate=date_predicate(date_column, column_type, dates)
    )


def append_idempotent(
    path: str, df: DataFrame, app_id: str, batch_id: int, merge_schema: bool = False
) -> None:
    """Append once per (app_id, batch_id), as Spark's `txnAppId`/`txnVersion` do.

    The commit records the pair as a Delta app transaction; a replay finds it
    (whichever writer recorded it) and writes nothing. `merge_schema`: columns
    the table lacks are added (strings, as raw's file columns are); columns it
    has and `df` lacks are null.
    """
    from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

    table = DeltaTable(local_path(path))
    seen = table.transaction_version(app_id)
    if seen is not None and seen >= batch_id:
        return
    data = df.toArrow()
    held = {f.name: f for f in pa.schema(table.schema().to_arrow())}
    if not merge_schema and set(data.schema.names) - set(held):
        raise ValueError(f"columns {sorted(set(data.schema.names) - set(held))} are not in the table {path}")
    data = data.cast(pa.schema([held.get(f.name, pa.field(f.name, pa.string())) for f in data.schema]))
    write_deltalake(
        table,
        data,
        mode="append",
        schema_mode="merge" if merge_schema else None,
        commit_properties=CommitProperties(app_transactions=[Transaction(app_id, batch_id)]),
    )


def write_staging(
    path: str, rows_df: DataFrame, schema: StructType, dates: Sequence[date], inserted: int, updated: int
) -> None:
    """Write classed staging rows: appended when none updates a held key, else one MERGE.

    `rows_df` holds one row per key, in the table's columns: `inserted` new keys
    and `updated` keys whose values changed. The MERGE's own counts must agree;
    a difference fails the batch (it would mean the classing was wrong).
    """
    from deltalake import DeltaTable, write_deltalake

    target = arrow_schema(schema)
    data = rows_df.toArrow().select(target.names).cast(target)
    if data.num_rows != inserted + updated:
        raise RuntimeError(
            f"staging: {data.num_rows} rows to write, classed {inserted} new + {updated} changed"
        )
    if data.num_rows == 0:
        return
    if updated == 0:
        write_deltalake(local_path(path), data, mode="append")
        return
    on = " AND ".join(f't."{c}" = s."{c}"' for c in ("reading_date", "meterpoint_id", "interval_start"))
    metrics = (
        DeltaTable(local_path(path))
        .merge(
            source=data,
            predicate=f"({date_predicate('t.reading_date', 'date', dates, quote=False)}) AND {on}",
            source_alias="s",
            target_alias="t",
        )
        .when_matched_update_all()
        .when_not_matched_insert_all()
        .execute()
    )
    done = (metrics.get("num_target_rows_inserted"), metrics.get("num_target_rows_updated"))
    if done != (inserted, updated):
        raise RuntimeError(f"staging MERGE inserted/updated {done}, classed ({inserted}, {updated})")
