"""Large appends to a local table: the executors write Parquet, delta-rs commits.

A backfill's raw and staging appends are most of its rows. Spark's own writer
(parquet-mr, then Delta's statistics) is JVM code that a cold JVM first
interprets and compiles. Here the executors' Python workers write each task's
rows with pyarrow's C++ Parquet writer instead: a file per task and partition
value, with its Delta statistics. They hand back one row per file, and the
driver commits those files in one delta-rs transaction, with the batch's app
transaction where the append must be idempotent.

This is what a Spark write job does, with the same guarantees:
- a failed task removes its partial files (and is retried where Spark retries
  tasks, on a cluster; in local mode it fails the batch); only the files of the
  attempts that succeeded reach the driver, so only those are committed;
- nothing is visible before the commit, and a crash before it leaves files no
  version names, which VACUUM removes;
- a NOT NULL column holding a null fails the write, as Spark's invariant check
  does.

Only an append to a local table whose protocol asks nothing beyond what this
writer does (`can_append`) takes this path; any other goes through Spark.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql.pandas.types import from_arrow_schema

from streaming import small_writes

# writer features whose every rule this writer keeps (`invariants`: NOT NULL)
WRITABLE_FEATURES = frozenset({"appendOnly", "invariants", "timestampNtz"})
# Delta's default `delta.dataSkippingNumIndexedCols`
STATS_COLUMNS = 32
# Delta's default prefix length of string statistics
STRING_PREFIX = 32
# rows buffered before a row group is written, and a task's files open at once
ROW_GROUP_ROWS = 250_000
MAX_OPEN_FILES = 32
# one row per file written (in Arrow on the executors, in Spark for `mapInArrow`)
FILES_ARROW = pa.schema(
    [
        ("path", pa.string()),
        ("size", pa.int64()),
        ("modification_time", pa.int64()),
        ("partition_values", pa.string()),
        ("stats", pa.string()),
    ]
)
FILES_SCHEMA = from_arrow_schema(FILES_ARROW)


# field metadata of rules a column carries: SQL invariants, generated and identity
# columns, CHAR/VARCHAR lengths (Spark's writer checks them; this one does not)
_FIELD_RULES = (b"delta.invariants", b"delta.generation", b"delta.identity", b"__CHAR_VARCHAR_TYPE_STRING")


class ParquetWriteError(RuntimeError):
    """Rows the table refuses (a null in a NOT NULL column); the batch fails."""


def can_append(path: str, columns: Sequence[str], merge_schema: bool = False) -> bool:
    """Whether an append of `columns` to the table at `path` can take this path:
    a local table of flat columns partitioned by dates or integers, with no rule
    this writer does not keep (CHECK constraints, SQL invariants, generated or
    identity columns, CHAR/VARCHAR lengths, column mapping, deletion vectors, ...),
    and every column one of its own by exact name, or (`merge_schema`) a new one
    that no other column matches in any letter case."""
    if small_writes.local_path(path) is None:
        return False
    table = small_writes._open(path)
    protocol = table.protocol()
    if protocol.min_writer_version > 7 or protocol.min_reader_version > 3:
        return False
    if protocol.min_writer_version == 7:
        if not set(protocol.writer_features or ()) <= WRITABLE_FEATURES:
            return False
    elif protocol.min_writer_version > 2:  # 3-6: CHECK constraints, generated columns, ...
        return False
    if not set(protocol.reader_features or ()) <= small_writes.READABLE_FEATURES:
        return False
    metadata = table.metadata()
    configuration = metadata.configuration
    if any(key.startswith("delta.constraints.") for key in configuration):
        return False
    if configuration.get("delta.columnMapping.mode", "none") != "none":
        return False
    schema = pa.schema(table.schema().to_arrow())
    for f in schema:
        if pa.types.is_nested(f.type) or any(k.startswith(_FIELD_RULES) for k in f.metadata or {}):
            return False
    for name in metadata.partition_columns:
        kind = schema.field(name).type
        if not (pa.types.is_date32(kind) or pa.types.is_integer(kind)):
            return False
    held = set(schema.names)
    new = [name for name in columns if name not in held]
    if not new:
        return True
    lowered = {name.lower() for name in new}
    return merge_schema and len(lowered) == len(new) and not lowered & {name.lower() for name in held}


def append(
    df: DataFrame,
    path: str,
    app_id: str | None = None,
    batch_id: int | None = None,
    merge_schema: bool = False,
) -> None:
    """Append `df`'s rows to the local table at `path` (`can_append`) in one commit.

    With `app_id`, once per (`app_id`, `batch_id`): the commit records them as
    a Delta app transaction, as Spark's `txnAppId`/`txnVersion` do, and a replay
    that finds them (whichever writer recorded them) writes nothing. Columns of
    the table that `df` lacks are null. `merge_schema`: `df`'s columns the table
    lacks are added first, in a commit of their own (delta-rs commits files under
    the table's schema as it is). So a write that fails after it (a crash, a
    failed task, a null in a NOT NULL column) leaves the new columns empty in the
    table, where Spark's `mergeSchema` would have added none; the replay fills them.
    """
    from deltalake import CommitProperties, Transaction
    from deltalake.schema import Field
    from deltalake.transaction import AddAction, RemoveAction

    table = small_writes._open(path)
    once = None
    if app_id is not None:
        if batch_id is None:
            raise ValueError("an idempotent append needs the batch id with the app id")
        if small_writes.appended(table, app_id, batch_id):
            return
        once = CommitProperties(app_transactions=[Transaction(app_id, batch_id)])
    held = set(pa.schema(table.schema().to_arrow()).names)
    new = [f for f in df.schema.fields if f.name not in held]
    if new:
        if not merge_schema:
            raise ParquetWriteError(f"columns {[f.name for f in new]} are not in the table {path}")
        table.alter.add_columns(
            [Field.from_json(json.dumps({**f.jsonValue(), "nullable": True})) for f in new],
            post_commithook_properties=small_writes._no_hook_checkpoint(),
        )
        small_writes._checkpoint_like_spark(table)
    schema = pa.schema(table.schema().to_arrow())
    partitions = list(table.metadata().partition_columns)
    stats = stats_columns(schema, partitions, table.metadata().configuration)
    root = small_writes._local(path)
    writer = partial(write_files, root, schema, partitions, stats)
    if partitions:  # a file per partition value and task, as Spark's writer sorts for
        df = df.sortWithinPartitions(*partitions)
    files = df.mapInArrow(writer, FILES_SCHEMA).collect()
    for row in files:
        # an executor on another host with its own disk at this path would have
        # written elsewhere: commit only files this table's folder holds
        if not os.path.isfile(os.path.join(root, row["path"])):
            raise ParquetWriteError(f"{row['path']}, written by an executor, is not in {root}")
    actions: list[AddAction | RemoveAction] = [
        AddAction(
            path=row["path"],
            size=row["size"],
            partition_values=json.loads(row["partition_values"]),
            modification_time=row["modification_time"],
            data_change=True,
            stats=row["stats"],
        )
        for row in files
    ]
    table.create_write_transaction(
        actions,
        mode="append",
        schema=table.schema(),
        partition_by=partitions or None,
        commit_properties=once,
        post_commithook_properties=small_writes._no_hook_checkpoint(),
    )
    small_writes._checkpoint_like_spark(table)


def stats_columns(schema: pa.Schema, partitions: Sequence[str], configuration: dict[str, str]) -> list[str]:
    """The columns whose statistics Delta keeps: `delta.dataSkippingStatsColumns`,
    else the first `delta.dataSkippingNumIndexedCols` (32; -1: all) that are not
    partition columns."""
    named = configuration.get("delta.dataSkippingStatsColumns")
    if named:
        wanted = {n.strip().strip("`") for n in named.split(",")}
        return [n for n in schema.names if n in wanted and n not in partitions]
    data_columns = [n for n in schema.names if n not in partitions]
    limit = int(configuration.get("delta.dataSkippingNumIndexedCols", STATS_COLUMNS))
    return data_columns if limit < 0 else data_columns[:limit]


# --- executor side ---------------------------------------------------------------------------


@dataclass
class _ColumnStats:
    nulls: int = 0
    low: Any = None
    high: Any = None
    bounded: bool = True  # False once a value has no bound (NaN, infinity)

    def add(self, values: pa.Array) -> None:
        self.nulls += values.null_count
        if not self.bounded or values.null_count == len(values):
            return
        kind = values.type
        if not _bounded_type(kind):
            return
        if pa.types.is_floating(kind) and not pc.all(pc.is_finite(values)).as_py():
            self.bounded = False
            return
        if pa.types.is_timestamp(kind):
            values = values.cast(pa.int64())
        extremes = pc.min_max(values)
        low, high = extremes["min"].as_py(), extremes["max"].as_py()
        self.low = low if self.low is None or low < self.low else self.low
        self.high = high if self.high is None or high > self.high else self.high


@dataclass
class _OpenFile:
    relative: str
    writer: Any  # pyarrow.parquet.ParquetWriter
    partition_values: dict[str, str | None]
    columns: dict[str, _ColumnStats]
    rows: int = 0
    pending: list[pa.RecordBatch] = field(default_factory=list)  # rows of the next row group
    pending_rows: int = 0

    def add(self, data: pa.RecordBatch) -> None:
        self.pending.append(data)
        self.pending_rows += data.num_rows
        self.rows += data.num_rows
        for name, column_stats in self.columns.items():
            column_stats.add(data.column(name))

    def flush(self) -> None:
        """The pending rows as one row group."""
        if self.pending:
            self.writer.write_table(pa.Table.from_batches(self.pending), row_group_size=self.pending_rows)
            self.pending, self.pending_rows = [], 0


class _TaskFiles:
    """One task's files: a file per partition value, its rows buffered into row groups
    of up to `ROW_GROUP_ROWS` (Arrow hands over 10,000 rows at a time); at most
    `MAX_OPEN_FILES` open at once (a value met again after its file was closed
    gets another file)."""

    def __init__(self, root: str, schema: pa.Schema, partitions: list[str], stats: list[str]) -> None:
        self.root, self.schema, self.partitions, self.stats = root, schema, partitions, stats
        self.data_schema = pa.schema([f for f in schema if f.name not in partitions])
        self.task = uuid.uuid4()
        self.open: dict[tuple[Any, ...], _OpenFile] = {}  # least recently written first
        self.closed: list[_OpenFile] = []
        self.made: list[str] = []  # every file begun, for the clean-up

    def add(self, key: tuple[Any, ...], part: pa.RecordBatch) -> None:
        out = self.open.pop(key, None) or self._begin(key)
        self.open[key] = out  # now the most recently written
        out.add(part.select(self.data_schema.names))
        if sum(f.pending_rows for f in self.open.values()) >= ROW_GROUP_ROWS:
            max(self.open.values(), key=lambda f: f.pending_rows).flush()

    def _begin(self, key: tuple[Any, ...]) -> _OpenFile:
        import pyarrow.parquet as pq

        if len(self.open) >= MAX_OPEN_FILES:
            self._close(self.open.pop(next(iter(self.open))))
        values = {p: _partition_value(v) for p, v in zip(self.partitions, key, strict=True)}
        folder = "".join(
            f"{p}={v if v is not None else '__HIVE_DEFAULT_PARTITION__'}/" for p, v in values.items()
        )
        relative = f"{folder}part-{len(self.made):05d}-{self.task}.c000.snappy.parquet"
        os.makedirs(os.path.join(self.root, folder), exist_ok=True)
        self.made.append(relative)
        writer = pq.ParquetWriter(os.path.join(self.root, relative), self.data_schema, compression="snappy")
        return _OpenFile(relative, writer, values, {c: _ColumnStats() for c in self.stats})

    def _close(self, out: _OpenFile) -> None:
        out.flush()
        out.writer.close()
        self.closed.append(out)

    def finish(self) -> list[dict[str, Any]]:
        """Close every file; a row per file for the commit."""
        while self.open:
            self._close(self.open.pop(next(iter(self.open))))
        rows = []
        for out in self.closed:
            status = os.stat(os.path.join(self.root, out.relative))
            rows.append(
                {
                    "path": out.relative,
                    "size": status.st_size,
                    "modification_time": status.st_mtime_ns // 1_000_000,
                    "partition_values": json.dumps(out.partition_values),
                    "stats": _stats_json(out, self.schema),
                }
            )
        return rows

    def remove(self, error: BaseException) -> None:
        """After a failure: close and remove every file begun. A clean-up step that
        fails is noted on `error`, which the caller raises."""
        for out in self.open.values():
            try:
                out.writer.close()
            except Exception as exc:  # noted on the error being raised
                error.add_note(f"closing {out.relative} after the failure failed too: {exc!r}")
        for relative in self.made:
            try:
                os.remove(os.path.join(self.root, relative))
            except FileNotFoundError:
                pass  # never made on disk: nothing to remove
            except OSError as exc:  # noted on the error being raised
                error.add_note(f"{relative} could not be removed after the failure: {exc!r}")


def write_files(
    root: str, schema: pa.Schema, partitions: list[str], stats: list[str], batches: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """mapInArrow: one task's rows -> Parquet files under `root` (one per partition
    value, `_TaskFiles`), and a row per file for the commit. A failure removes the
    task's files and is raised."""
    files = _TaskFiles(root, schema, partitions, stats)
    try:
        for batch in batches:
            for key, part in _split(_in_schema(batch, schema), partitions):
                files.add(key, part)
        rows = files.finish()
    except BaseException as error:
        files.remove(error)
        raise
    yield pa.RecordBatch.from_pylist(rows, schema=FILES_ARROW)


def _in_schema(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """`batch` in the table's columns and types (a column it lacks is null), NOT NULL checked."""
    columns = []
    for f in schema:
        index = batch.schema.get_field_index(f.name)
        column = batch.column(index) if index >= 0 else pa.nulls(batch.num_rows, f.type)
        if not f.nullable and column.null_count:
            raise ParquetWriteError(f"NOT NULL column {f.name!r} holds {column.null_count} null value(s)")
        if column.type != f.type and not _same_values(column.type, f.type):
            raise ParquetWriteError(f"column {f.name!r} is {column.type}, the table's is {f.type}")
        columns.append(column.cast(f.type) if column.type != f.type else column)
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _same_values(given: pa.DataType, wanted: pa.DataType) -> bool:
    """Types whose cast changes no value: instants in another time zone's
    metadata, strings in another Arrow layout."""
    if pa.types.is_timestamp(given) and pa.types.is_timestamp(wanted):
        return given.unit == wanted.unit and (given.tz is None) == (wanted.tz is None)
    strings = (pa.string(), pa.large_string(), pa.string_view())
    return given in strings and wanted in strings


def _split(batch: pa.RecordBatch, partitions: list[str]) -> Iterator[tuple[tuple[Any, ...], pa.RecordBatch]]:
    if not partitions:
        yield (), batch
        return
    keys = pa.Table.from_batches([batch]).select(partitions).group_by(partitions).aggregate([])
    for key in keys.to_pylist():
        mask = None
        for name in partitions:
            column = batch.column(name)
            match = pc.is_null(column) if key[name] is None else pc.equal(column, key[name])
            mask = match if mask is None else pc.and_(mask, match)
        yield tuple(key[name] for name in partitions), batch.filter(pc.fill_null(mask, False))


def _partition_value(value: Any) -> str | None:
    return None if value is None else value.isoformat() if isinstance(value, date) else str(value)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _bounded_type(kind: pa.DataType) -> bool:
    """Types whose min and max this writer keeps (`_bound`)."""
    return (
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_date32(kind)
        or pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or (pa.types.is_timestamp(kind) and kind.tz is not None)
    )


def _millis(us: int, up: bool) -> str | None:
    """A UTC timestamp's statistic, to the millisecond as Delta keeps them: a
    lower bound rounded down, an upper bound up (still bounds); None where the
    rounded instant is outside years 1-9999."""
    ms = -(-us // 1000) if up else us // 1000
    try:
        moment = _EPOCH + timedelta(milliseconds=ms)
    except OverflowError:
        return None
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}.{moment.microsecond // 1000:03d}Z"
    )


def _bound(kind: pa.DataType, value: Any, up: bool) -> Any:
    """A JSON statistic for `value`, or None where none is kept (then the column has
    no bound on that side, which every reader takes as unknown)."""
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        if len(value) <= STRING_PREFIX:
            return value
        return None if up else value[:STRING_PREFIX]  # a prefix is a lower bound
    if pa.types.is_timestamp(kind):
        return _millis(value, up) if kind.tz is not None else None  # TIMESTAMP_NTZ: none kept
    if pa.types.is_date32(kind):
        return f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return value if not isinstance(value, float) or math.isfinite(value) else None
    return None  # booleans, binary, decimals, nested: no bounds kept


def _stats_json(out: _OpenFile, schema: pa.Schema) -> str:
    low: dict[str, Any] = {}
    high: dict[str, Any] = {}
    for name, column_stats in out.columns.items():
        if not column_stats.bounded or column_stats.low is None:
            continue
        kind = schema.field(name).type
        for bounds, value, up in ((low, column_stats.low, False), (high, column_stats.high, True)):
            bound = _bound(kind, value, up)
            if bound is not None:
                bounds[name] = bound
    return json.dumps(
        {
            "numRecords": out.rows,
            "minValues": low,
            "maxValues": high,
            "nullCount": {name: s.nulls for name, s in out.columns.items()},
        },
        separators=(",", ":"),
    )
