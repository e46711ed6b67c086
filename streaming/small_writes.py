"""Small presentation writes without a Spark job: delta-rs (the `deltalake` package).

A presentation refresh writes a few hundred aggregate rows a date. Through
Spark, each of the four tables costs a Delta snapshot rebuild, a file scan and
about ten Spark jobs (3-4 s of a one-file batch on 2 cores); delta-rs commits
the same rows to the same table in about 10 ms. The aggregates are still
computed by Spark; only their few rows pass through the driver, as Arrow, and
only for batches of at most `MAX_DATES` dates, so the driver's memory does not
grow with the input. Both writers follow the Delta protocol; Spark reads,
OPTIMIZEs and VACUUMs what delta-rs wrote, and the other way round.

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

# A batch touching more local dates than this is written by Spark (a backfill
# of months would bring dates x 48 x products rows to the driver).
MAX_DATES = 31


def is_local(path: str) -> bool:
    """A plain path or a `file:` URI (delta-rs writes these); other schemes are not."""
    return "://" not in path or path.startswith("file:")


def local_path(path: str) -> str:
    """`file:/a/b` or `file:///a/b` -> `/a/b`; a plain path is kept."""
    if path.startswith("file:"):
        return "/" + path[len("file:") :].lstrip("/")
    return path


def date_predicate(column: str, column_type: str, dates: Sequence[date]) -> str:
    """A delta-rs (DataFusion SQL) predicate selecting the rows of the local `dates`.

    `column_type` is `date` (compared with the dates) or `timestamp` (a local
    wall-clock time: compared with each date's midnight to the next's). Runs of
    consecutive dates become one range, so file statistics can prune.
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

    quoted = '"' + column.replace('"', '""') + '"'
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
