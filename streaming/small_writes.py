"""Small writes without a Spark job for the commit: Spark computes, delta-rs commits.

A one-file micro-batch writes a few dozen raw and staging rows and a few
hundred presentation rows. Through Spark's Delta writer each of those six
commits rebuilds the table's snapshot and runs several Spark jobs (about 1 s of
CPU a table on 2 cores); delta-rs (the `deltalake` package) commits the same
rows to the same table in about 10 ms. The rows come to the driver as Arrow
(one Spark job, `toArrow`), so only small writes take this path: raw and
staging writes of at most `MAX_ROWS` rows, presentation refreshes of at most
`MAX_DATES` dates; the driver holds at most that many rows (times the table's
width) of one write at a time. Both writers follow the Delta protocol: Spark
reads, OPTIMIZEs and VACUUMs what delta-rs wrote, both record an idempotent
append (app id, batch id) as a Delta app transaction, and delta-rs writes a
log checkpoint as often as Spark does (every 10 commits unless the table says
otherwise), so Spark's reads replay as few log files as before.

delta-rs also reads staging's rows of a batch's (or a dimension refresh's)
dates when they are at most `MAX_READ_ROWS` (`read_partitions`): Spark's first
read of a table after a delta-rs commit rebuilds its snapshot (about 0.5 s), and
a batch read staging twice (to class its rows, then to recompute presentation).
Those rows are on the driver (and, broadcast into the classing join, in the JVM)
while the batch uses them: with a write, at most `MAX_READ_ROWS` + `MAX_ROWS`
rows of staging's width.

Only for tables on the local file system (a folder, or a `file:` URI without a
host): delta-rs names object stores differently (`s3://`, not `s3a://`) and
needs its own credentials, so any other lake is written by Spark. The table must
exist (the pipeline creates every table at start-up): a missing one is an error,
never a new table created where Spark does not look. A local lake's start-up
is done here too: its empty tables created (`create_table`, as Spark's
`createIfNotExists` makes them), the dimensions landed and `active_agreements`
written (`overwrite`, which creates those tables on their first landing, as
Spark's writer does).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import DateType, StructType

if TYPE_CHECKING:
    from deltalake import DeltaTable

# Larger writes do not pass through the driver: a presentation refresh of more
# local dates would bring dates x 48 x products rows to it, a raw or staging
# write of more rows a backfill's worth. Such a raw or staging append to a local
# table is written by the executors (`parquet_writes`); the rest goes to Spark.
MAX_DATES = 31
MAX_ROWS = 100_000
# A read of staging's rows of a batch's dates (to class its rows, and to
# recompute presentation) goes through delta-rs when the dates hold at most this
# many rows (about 10,000 meterpoints a date); Spark reads larger ones.
MAX_READ_ROWS = 500_000
# reader features delta-rs' Arrow reader is known here to read as Spark does
# (a table with deletion vectors or column mapping is read by Spark)
READABLE_FEATURES = frozenset({"timestampNtz"})


# Spark's default `delta.checkpointInterval`; delta-rs' own default is 100
SPARK_CHECKPOINT_INTERVAL = 10


class SmallWriteError(RuntimeError):
    """A delta-rs write disagreed with what Spark computed for it; the batch fails."""


def local_path(path: str) -> str | None:
    """The local file-system path of a table location, or None when it is not local.

    `/a/b`, `file:/a/b`, `file:///a/b` and `file://localhost/a/b` are local;
    relative paths (Spark resolves them against `fs.defaultFS`), other schemes
    and `file://otherhost/...` are not.
    """
    parts = urlsplit(path)
    if parts.scheme == "":
        return path if path.startswith("/") else None
    if parts.scheme == "file" and parts.netloc in ("", "localhost"):
        return unquote(parts.path)
    return None


def is_local(path: str) -> bool:
    """Whether delta-rs may write the table at `path` (see `local_path`)."""
    return local_path(path) is not None


def _local(path: str) -> str:
    """`local_path(path)`, or a ValueError for a table delta-rs must not touch."""
    local = local_path(path)
    if local is None:
        raise ValueError(f"delta-rs reads and writes only tables on the local file system, not {path}")
    return local


def _open(path: str) -> DeltaTable:
    """The existing table at `path` (raises for a missing table or a non-local path)."""
    from deltalake import DeltaTable

    return DeltaTable(_local(path))


def table_columns(path: str) -> list[str]:
    """The column names of the existing local table at `path`, from its log."""
    return [field.name for field in _open(path).schema().fields]


def _no_hook_checkpoint() -> Any:
    """delta-rs' own checkpoint hook off: `_checkpoint_like_spark` decides instead."""
    from deltalake import PostCommitHookProperties

    return PostCommitHookProperties(create_checkpoint=False)


def _write(table: DeltaTable, data: pa.Table, **options: Any) -> None:
    """One `write_deltalake` commit to the open table, then a checkpoint where Spark makes one."""
    from deltalake import write_deltalake

    write_deltalake(table, data, post_commithook_properties=_no_hook_checkpoint(), **options)
    _checkpoint_like_spark(table)


def _checkpoint_like_spark(table: DeltaTable) -> None:
    """After a commit: a log checkpoint when Spark's writer would have written one."""
    table.update_incremental()
    version = table.version()
    interval = int(table.metadata().configuration.get("delta.checkpointInterval", SPARK_CHECKPOINT_INTERVAL))
    if version > 0 and interval > 0 and version % interval == 0:
        table.create_checkpoint()


# What a protocol of writer version 2 implies, which Spark lists when it creates a
# table with table features (writer version 7, e.g. for a TIMESTAMP_NTZ column);
# Spark refuses to write a table whose NOT NULL columns lack `invariants`.
LEGACY_WRITER_FEATURES = ("appendOnly", "invariants")


def create_table(path: str, schema: StructType, partitions: Sequence[str] = ()) -> None:
    """The empty table at `path` as Spark's `createIfNotExists` makes it: the same
    schema (its JSON, NOT NULL and field metadata kept), partition columns and
    protocol. An existing table is left as it is, apart from completing its
    protocol (`complete_protocol`), so a creation cut short between its two
    commits is mended by the next start."""
    from deltalake import DeltaTable, Schema

    table = DeltaTable.create(
        _local(path),
        schema=Schema.from_json(schema.json()),
        partition_by=list(partitions) or None,
        mode="ignore",
        post_commithook_properties=_no_hook_checkpoint(),
    )
    complete_protocol(table)


def complete_protocol(table: DeltaTable) -> None:
    """A writer-version-7 table lists the features of writer version 2, as Spark's
    does (one commit, only when one is missing)."""
    from deltalake.table import TableFeatures

    protocol = table.protocol()
    if protocol.min_writer_version < 7:
        return
    listed = set(protocol.writer_features or ())
    missing = [
        getattr(TableFeatures, f[0].upper() + f[1:]) for f in LEGACY_WRITER_FEATURES if f not in listed
    ]
    if missing:
        table.alter.add_feature(
            missing,
            allow_protocol_versions_increase=False,
            post_commithook_properties=_no_hook_checkpoint(),
        )


def overwrite(path: str, data: pa.Table, user_metadata: str, overwrite_schema: bool = False) -> None:
    """Replace the table at `path` (created if missing) with `data` in one commit,
    the commit annotated with `user_metadata` as Spark's `userMetadata` option
    does. `overwrite_schema`: the table takes `data`'s schema (Spark's
    `overwriteSchema`); otherwise a different schema is refused."""
    from deltalake import CommitProperties, write_deltalake

    write_deltalake(
        _local(path),
        data,
        mode="overwrite",
        schema_mode="overwrite" if overwrite_schema else None,
        commit_properties=CommitProperties(custom_metadata={"userMetadata": user_metadata}),
        post_commithook_properties=_no_hook_checkpoint(),
    )
    _checkpoint_like_spark(_open(path))


def newest_user_metadata(path: str, commits: int = 50) -> str | None:
    """The `userMetadata` of the newest of the table's last `commits` commits that
    carries one; None for a missing table or none found."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        table = DeltaTable(_local(path))
    except TableNotFoundError:
        return None
    for commit in sorted(table.history(commits), key=lambda c: -int(c.get("version", -1))):
        if commit.get("userMetadata") is not None:
            return str(commit["userMetadata"])
    return None


def row_count(path: str) -> int | None:
    """The rows of the table at `path` by its log's file statistics; None when a
    file has no row count there (or the table is not local)."""
    if not is_local(path):
        return None
    files = pa.table(_open(path).get_add_actions(flatten=True))
    if files.num_rows == 0:
        return 0
    return _logged_rows(files["num_records"])


def _logged_rows(counts: pa.ChunkedArray) -> int | None:
    """The sum of the log's row counts of some files; None when one has none."""
    return None if counts.null_count else int(pc.sum(counts).as_py() or 0)


def read_partitions(
    path: str, column: str, dates: Sequence[date], schema: StructType
) -> tuple[pa.Table, int] | None:
    """The rows of the table at `path` whose partition `column` is one of `dates`,
    and the number of data files holding them.

    In the table's Arrow schema (`arrow_schema`); None when Spark should read them
    instead: the table is not local, its protocol has a reader feature outside
    `READABLE_FEATURES` (or is reader version 2, column mapping without a feature
    list), a file of those dates has no row count in the log, or they hold more
    than `MAX_READ_ROWS` rows. Only the log (already replayed by delta-rs, a few
    ms) is consulted before deciding, no data file.
    """
    if not is_local(path):
        return None
    table = _open(path)
    protocol = table.protocol()
    if protocol.min_reader_version == 2 or not set(protocol.reader_features or ()) <= READABLE_FEATURES:
        return None
    wanted = sorted({d.isoformat() for d in dates})
    if not wanted:
        raise ValueError("no dates to read")
    files = pa.table(table.get_add_actions(flatten=True))
    if files.num_rows == 0:  # an empty table's actions have no partition column
        return arrow_schema(schema).empty_table(), 0
    in_dates = pc.is_in(files[f"partition.{column}"].cast(pa.string()), value_set=pa.array(wanted))
    counts = files.filter(in_dates)["num_records"]
    rows_logged = _logged_rows(counts)
    if rows_logged is None or rows_logged > MAX_READ_ROWS:
        return None
    rows = table.to_pyarrow_table(filters=[(column, "in", wanted)])
    return _in_schema(rows, schema), len(counts)


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


def _in_schema(data: pa.Table, schema: StructType) -> pa.Table:
    """`data`'s columns of the table, in its Arrow schema (NOT NULL columns included)."""
    target = arrow_schema(schema)
    return data.select(target.names).cast(target)


def arrow_rows(df: DataFrame, schema: StructType) -> pa.Table:
    """`df`'s rows on the driver, in the table's Arrow schema."""
    return _in_schema(df.toArrow(), schema)


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
    table = _open(path)
    data = arrow_rows(fresh_df, schema)
    if append:
        _write(table, data, mode="append")
    else:
        column_type = "date" if isinstance(schema[date_column].dataType, DateType) else "timestamp"
        _write(table, data, mode="overwrite", predicate=date_predicate(date_column, column_type, dates))


def append_idempotent(
    path: str, df: DataFrame, app_id: str, batch_id: int, merge_schema: bool = False
) -> None:
    """Append once per (app_id, batch_id), as Spark's `txnAppId`/`txnVersion` do.

    The commit records the pair as a Delta app transaction; a replay finds it
    (whichever writer recorded it) and writes nothing. `merge_schema`: columns
    the table lacks are added (strings, as raw's file columns are); columns it
    has and `df` lacks are null. As in Spark's schema merge, a column that
    differs from one of the table's only in case is that column.
    """
    from deltalake import CommitProperties, Transaction

    table = _open(path)
    if appended(table, app_id, batch_id):
        return
    data = df.toArrow()
    held = {f.name.lower(): f for f in pa.schema(table.schema().to_arrow())}
    new = [name for name in data.schema.names if name.lower() not in held]
    if new and not merge_schema:
        raise SmallWriteError(f"columns {new} are not in the table {path}")
    fields = [held.get(name.lower(), pa.field(name, pa.string())) for name in data.schema.names]
    data = data.rename_columns([f.name for f in fields]).cast(pa.schema(fields))
    _write(
        table,
        data,
        mode="append",
        schema_mode="merge" if merge_schema else None,
        commit_properties=CommitProperties(app_transactions=[Transaction(app_id, batch_id)]),
    )


def appended(table: DeltaTable, app_id: str, batch_id: int) -> bool:
    """Whether the table records the app transaction (`app_id`, `batch_id`) or a
    later one of `app_id`, whichever writer (Spark's `txnAppId`/`txnVersion`, or
    delta-rs) committed it: an idempotent append then writes nothing."""
    seen = table.transaction_version(app_id)
    return seen is not None and seen >= batch_id


def classed_rows(df: DataFrame, schema: StructType) -> tuple[pa.Table, int, int]:
    """The classed rows of `df` on the driver (one `toArrow`): in the table's Arrow
    schema, with how many are new (`_change` = insert) and changed (update)."""
    data = df.toArrow()
    kinds = data["_change"]
    inserted = pc.sum(pc.equal(kinds, "insert")).as_py() or 0
    updated = pc.sum(pc.equal(kinds, "update")).as_py() or 0
    if inserted + updated != data.num_rows:
        raise SmallWriteError(f"staging: {data.num_rows} classed rows, {inserted} new + {updated} changed")
    return _in_schema(data, schema), inserted, updated


def write_staging(
    path: str,
    data: pa.Table,
    keys: Sequence[str],
    dates: Sequence[date],
    inserted: int,
    updated: int,
) -> None:
    """Write classed staging rows: appended when none updates a held key, else one MERGE.

    `data` holds one row per key (`keys`, the first the `reading_date`
    partition), in the table's Arrow schema: `inserted` new keys and `updated`
    keys whose values changed. The MERGE's own counts must agree:
    a difference fails the batch loudly. The MERGE is committed by then, so a
    replay finds the rows equal and goes on; the error in the log is the report.
    """
    table = _open(path)
    if data.num_rows != inserted + updated:
        raise SmallWriteError(
            f"staging: {data.num_rows} rows to write, classed {inserted} new + {updated} changed"
        )
    if data.num_rows == 0:
        return
    if updated == 0:
        _write(table, data, mode="append")
        return
    on = " AND ".join(f't."{c}" = s."{c}"' for c in keys)
    metrics = (
        table.merge(
            source=data,
            predicate=f"({date_predicate(f't.{keys[0]}', 'date', dates, quote=False)}) AND {on}",
            source_alias="s",
            target_alias="t",
            post_commithook_properties=_no_hook_checkpoint(),
        )
        .when_matched_update_all()
        .when_not_matched_insert_all()
        .execute()
    )
    _checkpoint_like_spark(table)
    done = (metrics.get("num_target_rows_inserted"), metrics.get("num_target_rows_updated"))
    if done != (inserted, updated):
        raise SmallWriteError(f"staging MERGE inserted/updated {done}, classed ({inserted}, {updated})")
