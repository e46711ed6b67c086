"""The readings source: a file stream on the readings folder, each file parsed whole."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from streaming import schemas
from streaming.config import Config
from streaming.parsing import parse_readings

_RAW_VALUES = pa.map_(pa.string(), pa.string())
# The readings files: `*.json` whose name does not start with `.` or `_` (the
# contract's names of files being written). Spark's listing skips most such names
# by itself, but not those holding `=` (partition-like, `_x=1.json`) nor
# `_metadata*` and `_common_metadata*` (Parquet summaries).
READINGS_GLOB = "[!._]*.json"


def read_readings_stream(spark: SparkSession, cfg: Config) -> DataFrame:
    """A streaming DataFrame of parsed records (schema `schemas.PARSED`).

    `binaryFile` hands each file over whole, so one-line and pretty-printed JSON
    are parsed alike and a broken file is one bad record, not a broken query.
    Names starting with `.` or `_` are skipped (`READINGS_GLOB`).
    """
    reader = (
        spark.readStream.format("binaryFile")
        .schema(schemas.BINARY_FILE)
        .option("pathGlobFilter", READINGS_GLOB)
        .option("maxFileAge", cfg.max_file_age)
    )
    if cfg.max_files_per_trigger > 0:
        reader = reader.option("maxFilesPerTrigger", cfg.max_files_per_trigger)
    if cfg.archive_dir:
        # processed files are moved out, so listing the folder stays cheap for years
        reader = reader.option("cleanSource", "archive").option("sourceArchiveDir", cfg.archive_dir)
    files_df = reader.load(cfg.readings)
    return parse_files(files_df, cfg.timezone)


def parse_files(files_df: DataFrame, tz_name: str) -> DataFrame:
    """DataFrame of files (`path`, `modificationTime`, `content`) -> parsed records."""
    return files_df.select("path", "modificationTime", "content").mapInArrow(
        arrow_parser(tz_name), schemas.PARSED
    )


def arrow_parser(tz_name: str) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The executor-side function: Arrow batches of files -> Arrow batches of records."""

    def parse_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            yield _parse_batch(batch, tz_name)

    return parse_batches


def _parse_batch(batch: pa.RecordBatch, tz_name: str) -> pa.RecordBatch:
    paths = batch.column("path")
    mtimes = batch.column("modificationTime")
    contents = batch.column("content").to_pylist()
    cols: dict[str, list] = {name: [] for name in schemas.PARSED.fieldNames()}
    file_of_record: list[int] = []
    # raw_values is built from flat lists (a map per row record, null for file
    # records): the parser then makes no list of (name, value) pairs per row
    keys: list[str] = []
    items: list[str | None] = []
    offsets: list[int] = [0]
    no_map: list[bool] = []

    def pad(n: int, *names: str) -> None:
        for name in names:
            cols[name].extend([None] * n)

    for f, content in enumerate(contents):
        parsed = parse_readings(content or b"", tz_name)
        n = len(parsed.row_index)
        # the file record
        file_of_record.append(f)
        cols["kind"].append("file")
        cols["columns"].append(parsed.columns)
        cols["file_error"].append(parsed.error)
        offsets.append(len(items))
        no_map.append(True)
        pad(
            1,
            "row_index",
            "row_json",
            "meterpoint_id",
            "interval_start_us",
            "interval_start_local_us",
            "consumption_kwh",
            "reason",
        )
        # its rows
        file_of_record.extend([f] * n)
        cols["kind"].extend(["row"] * n)
        pad(n, "columns", "file_error")
        cols["row_index"].extend(parsed.row_index)
        if n:
            width = len(parsed.columns or ())
            if len(parsed.delivered) != width * n:  # a map would take its neighbour's values
                raise RuntimeError(
                    f"parser bug: {len(parsed.delivered)} delivered values for {n} rows of {width} columns"
                )
            base = len(items)
            keys.extend((parsed.columns or []) * n)
            items.extend(parsed.delivered)
            offsets.extend(range(base + width, base + width * n + 1, width))
            no_map.extend([False] * n)
        cols["row_json"].extend(parsed.row_json)
        cols["meterpoint_id"].extend(parsed.meterpoint_id)
        cols["interval_start_us"].extend(parsed.interval_start_us)
        cols["interval_start_local_us"].extend(parsed.interval_start_local_us)
        cols["consumption_kwh"].extend(parsed.consumption_kwh)
        cols["reason"].extend(parsed.reason)
    take = pa.array(file_of_record, type=pa.int32())
    arrays = {
        "kind": pa.array(cols["kind"], pa.string()),
        "source_file": paths.take(take),
        "file_modification_time": mtimes.take(take),
        "columns": pa.array(cols["columns"], pa.list_(pa.string())),
        "file_error": pa.array(cols["file_error"], pa.string()),
        "row_index": pa.array(cols["row_index"], pa.int32()),
        "raw_values": pa.MapArray.from_arrays(
            pa.array(offsets, pa.int32()),
            pa.array(keys, pa.string()),
            pa.array(items, pa.string()),
            type=_RAW_VALUES,
            mask=pa.array(no_map, pa.bool_()),
        ),
        "row_json": pa.array(cols["row_json"], pa.string()),
        "meterpoint_id": pa.array(cols["meterpoint_id"], pa.string()),
        "interval_start_us": pa.array(cols["interval_start_us"], pa.int64()),
        "interval_start_local_us": pa.array(cols["interval_start_local_us"], pa.int64()),
        "consumption_kwh": pa.array(cols["consumption_kwh"], pa.float64()),
        "reason": pa.array(cols["reason"], pa.string()),
    }
    return pa.RecordBatch.from_arrays(
        [arrays[name] for name in schemas.PARSED.fieldNames()],
        names=schemas.PARSED.fieldNames(),
    )


def micros_to_timestamp(us: Column) -> Column:
    """UTC microseconds -> TIMESTAMP (an instant)."""
    return F.timestamp_micros(us)


def micros_to_local(us: Column) -> Column:
    """Wall-clock microseconds -> TIMESTAMP_NTZ (the session time zone is UTC)."""
    return F.timestamp_micros(us).cast("timestamp_ntz")


def normalise_path(path: str, uri: bool = True) -> str:
    """`file:///a/b` (the source log) and `file:/a/b` (the scan) name one file.
    `uri`: the path is a URI (the source log's), whose escapes are decoded; the
    scan's `source_file` is not (`a%20b.json` there is that name)."""
    from urllib.parse import unquote

    if uri:
        path = unquote(path)
    return "file:/" + path[len("file:") :].lstrip("/") if path.startswith("file:") else path


def unread_reason(path: str) -> str:
    """Why a logged file produced no record: it is empty, or it vanished."""
    from pathlib import Path

    local = Path(normalise_path(path).removeprefix("file:"))
    if path.startswith("file:") or "://" not in path:
        if not local.exists():
            return "vanished: the file was removed before it could be read"
        if local.stat().st_size == 0:
            return "empty_file: the file is empty (0 bytes)"
    return "unreadable: the file produced no data (empty, or removed before it was read)"
