"""The foreachBatch handler: raw append, quarantine, staging MERGE, presentation refresh.

`Pipeline` holds what lives across micro-batches (config, the conformed
dimensions, the checkpoint's query id) and serialises every lake write behind
one lock, so a dimension refresh from a timer never interleaves with a batch.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import partial
from typing import Any
from urllib.parse import unquote

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from streaming import (
    dimensions,
    expectations,
    ingestion_log,
    schemas,
    sinks,
    small_writes,
    source,
    transforms,
)
from streaming.config import Config

log = logging.getLogger(__name__)

CRASH_ENV = "SMART_METER_CRASH_AT"  # test hook: kill the process at a named point
CRASH_POINTS = ("after_raw", "after_staging", "mid_presentation")


class StopRequested(RuntimeError):
    """A batch was about to begin after a stop had been requested: it is not begun
    (nothing is written, the checkpoint replays it on the next run)."""


class SimulatedCrash(RuntimeError):
    """Raised at a crash point by in-process tests (`Pipeline.raise_at`)."""


def crash_point(name: str, raise_at: str | None = None) -> None:
    """Test hooks: kill this process with SIGKILL when the environment names this
    point; raise `SimulatedCrash` when `raise_at` does (in-process tests)."""
    if raise_at == name:
        raise SimulatedCrash(f"simulated crash at {name}")
    if os.environ.get(CRASH_ENV) == name:
        log.warning("crash hook: killing the process at %s", name)
        if os.getpgid(0) == os.getpid():  # a group leader: kill the tree (the JVM too)
            os.killpg(os.getpid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)


class Pipeline:
    """State and writes of one running pipeline (one checkpoint, one lake)."""

    def __init__(self, spark: SparkSession, cfg: Config) -> None:
        self.spark = spark
        self.cfg = cfg
        self.lake = sinks.LakePaths(cfg.lake)
        self.lock = threading.RLock()
        self.dims: dimensions.Conformed | None = None
        self.db_signature: tuple[int, int, int] | None = None
        self.app_id: str | None = None
        # the checkpoint in use (runner.start_query sets it before every query)
        self.generation = ingestion_log.current(cfg.checkpoints)
        self.batches: list[dict[str, Any]] = []
        self.failure = False  # set by a background refresh that failed
        self.raise_at: str | None = None  # test hook: a crash point to raise at
        self.rules = expectations.load_expectations(cfg.expectations)
        self.phases: dict[str, float] = {}  # seconds per phase of the batch (or start-up) in hand
        self._prepared: Future[None] | None = None  # `preparing()`: the start-up running beside the query
        self.stop_event: threading.Event | None = None  # set when the service is asked to stop
        # set while the runner stops the query to start it again (a new ingestion-log generation)
        self.pause_event = threading.Event()
        self.small_writes = sinks.small_writes_setting(spark, cfg.small_writes)
        # Who creates the tables, lands the dimensions and reads their stamps:
        # delta-rs for a local lake under "auto" (a few ms each, where a cold JVM's
        # Spark took 10-15 CPU s at start-up), Spark otherwise.
        self.lake_writer = sinks.writer_for(self.small_writes, cfg.lake)

    def _timed_call(self, phase: str, func: Callable[..., None], *args: Any) -> None:
        with self.timed(phase):
            func(*args)

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Adds the wall time of the block to `self.phases[phase]` (the batch log shows them)."""
        started = time.monotonic()
        try:
            yield
        finally:
            self.phases[phase] = round(self.phases.get(phase, 0.0) + time.monotonic() - started, 2)

    # ------------------------------------------------------------ dimensions

    @contextmanager
    def preparing(self, stop_event: threading.Event) -> Iterator[None]:
        """Run `prepare()` in a thread while the block starts the query.

        The query's start (checkpoint, listing the folder, planning the first
        batch) overlaps the lake's start-up, which is mostly the first Delta
        commits of a cold JVM. Every batch and dimension check waits for the
        start-up first (`wait_prepared`), so none sees a half-ready lake. A
        failed start-up sets `stop_event`, so a service with nothing to process
        stops at once; leaving the block waits for the start-up and raises its
        error (a query failure it caused is only a consequence, and is logged).
        """
        self.stop_event = stop_event

        def stop_on_failure(done: Future[None]) -> None:
            if done.exception() is not None:
                stop_event.set()

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare") as pool:
            self._prepared = pool.submit(self.prepare)
            self._prepared.add_done_callback(stop_on_failure)
            try:
                yield
            except BaseException as query_error:
                error = self._prepared.exception()  # waits for the start-up to end
                if error is not None:
                    if str(error) not in str(query_error):  # not merely its consequence
                        log.warning("the query failed beside the failed start-up: %s", query_error)
                    raise error from None
                raise
            self._prepared.result()

    def wait_prepared(self) -> None:
        """Block until a start-up running beside the query is done; raise its error."""
        if self._prepared is not None:
            self._prepared.result()

    def prepare(self) -> None:
        """Create the tables and bring the dimensions (and what depends on them) up to date.

        For a local lake under `small_writes = "auto"` delta-rs creates the tables,
        lands the dimensions and reads their stamps (`lake_writer`); Spark computes
        `active_agreements` and anything a dimension change re-attributes.
        """
        with self.lock:
            self.phases = {}
            with self.timed("prepare"):
                # active_agreements is written by the refresh
                tables = [t for t in sinks.TABLES if t != sinks.ACTIVE_AGREEMENTS]
                if self.lake_writer == "delta-rs":
                    # every table, existing ones too: a creation cut short between
                    # its two commits gets its protocol completed (a few ms a table)
                    sinks.create_tables(self.spark, self.lake, tables, self.lake_writer)
                    self.refresh_dimensions(force=True)
                else:
                    self._prepare_with_spark(tables)
            log.info("lake and dimensions ready in %.1f s", self.phases["prepare"])

    def _prepare_with_spark(self, tables: list[str]) -> None:
        """Spark creates the missing tables beside the dimension refresh (each
        commit is mostly driver latency)."""
        missing = [t for t in sinks.missing_tables(self.spark, self.lake) if t in tables]
        if sinks.STAGING not in missing:
            # an existing lake may re-attribute (and rewrite presentation dates) in
            # the refresh: its tables must exist first
            sinks.create_tables(self.spark, self.lake, missing)
            self.refresh_dimensions(force=True)
            return
        # a new lake: nothing to re-attribute, the two overlap (the refresh stays
        # on this thread, which holds the lock)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="create-tables") as pool:
            created = pool.submit(sinks.create_tables, self.spark, self.lake, missing)
            try:
                self.refresh_dimensions(force=True)
            except BaseException:
                if created.exception() is not None:
                    log.error("creating the tables failed too", exc_info=created.exception())
                raise
            created.result()

    def refresh_dimensions(self, force: bool = False) -> bool:
        """Reload the SQLite dimensions if the file changed; True if anything was reloaded.

        On a change, staging rows whose attribution changes are re-attributed and
        the presentation dates they feed recomputed; the raw dimension tables are
        landed last, so a crash before the end redoes the whole refresh.
        """
        with self.lock:
            signature = dimensions.db_signature(self.cfg.db)
            if not force and signature == self.db_signature:
                return False
            source = dimensions.read_sqlite(self.cfg.db)
            self.db_signature = signature
            if self.dims is not None and self.dims.fingerprint == source.fingerprint:
                return False
            fresh = dimensions.conformed_dataframes(self.spark, source)
            agreements = len(source.tables["agreement"].rows)
            landed = dimensions.landed_fingerprint(
                self.spark, self.lake(f"raw/{dimensions.STAMPED}"), self.lake_writer
            )
            if landed != source.fingerprint:
                previous = self._landed_dimensions()
                try:
                    self._reattribute(fresh, previous)
                finally:
                    if previous is not None:
                        previous.unpersist()
                in_parallel(
                    [
                        partial(dimensions.land_raw, self.spark, self.lake, source, self.lake_writer),
                        partial(self._write_active_agreements, fresh, agreements),
                    ]
                )
                log.info("dimensions landed (fingerprint %s…)", source.fingerprint[:12])
            else:
                self._write_active_agreements(fresh, agreements)
            old, self.dims = self.dims, fresh
            if old is not None:
                old.unpersist()
            return True

    def _landed_dimensions(self) -> dimensions.Conformed | None:
        """The conformed view of the dimensions last landed in raw/*, if any."""
        tables = {}
        for name in dimensions.TABLES:
            location = self.lake(f"raw/{name}")
            if not sinks.table_exists(self.spark, location):
                return None
            df = self.spark.read.format("delta").load(location)
            rows = tuple(tuple(r) for r in df.collect())
            tables[name] = dimensions.SourceTable(
                name, tuple(df.columns), tuple("" for _ in df.columns), rows
            )
        return dimensions.conformed_dataframes(
            self.spark, dimensions.Dimensions(tables=tables, fingerprint="landed")
        )

    def _reattribute(self, fresh: dimensions.Conformed, previous: dimensions.Conformed | None) -> None:
        """Re-join staging rows of meterpoints whose attribution may change; refresh their dates."""
        location = self.lake(sinks.STAGING)
        if not sinks.table_exists(self.spark, location):
            return  # a new lake (its tables are being created): nothing to re-attribute
        if self.lake_writer == "delta-rs" and small_writes.row_count(location) == 0:
            return  # by the log's counts, no Spark job
        staging = self.spark.read.format("delta").load(location)
        if staging.isEmpty():
            return
        if previous is None:
            affected = staging.select("meterpoint_id").distinct()
        else:
            affected = _changed_meterpoints(previous, fresh)
        rows = staging.join(F.broadcast(affected), "meterpoint_id", "left_semi")
        re_attributed = transforms.with_attribution(rows, fresh.segments_df, fresh.meterpoints_df)
        re_attributed = re_attributed.persist()
        try:
            dates = sorted(r[0] for r in re_attributed.select("reading_date").distinct().collect())
            if not dates:
                return
            log.info(
                "dimension change: re-attributing %d meterpoint(s) over %d date(s)",
                affected.count(),
                len(dates),
            )
            sinks.update_attribution(
                self.spark,
                self.lake(sinks.STAGING),
                re_attributed,
                list(transforms.ATTRIBUTION_COLUMNS),
            )
            self.refresh_presentation(dates)
        finally:
            re_attributed.unpersist()

    def _write_active_agreements(self, dims: dimensions.Conformed, agreements: int) -> None:
        """Rewrite the table when the dimensions or the as-of date changed since it was
        written; `agreements` is the source's agreement rows (at most the table's rows)."""
        location = self.lake(sinks.ACTIVE_AGREEMENTS)
        stamp = {"source_fingerprint": dims.fingerprint, "as_of": self.cfg.as_of.isoformat()}
        if dimensions.landed_metadata(self.spark, location, self.lake_writer) == stamp:
            return
        fresh = transforms.active_agreements(dims.agreements_df, self.cfg.as_of)
        sinks.overwrite(
            sinks.conform(fresh, schemas.ACTIVE_AGREEMENTS),
            location,
            schemas.ACTIVE_AGREEMENTS,
            json.dumps(stamp),
            # at most one row per agreement comes to the driver
            sinks.writer_for(self.small_writes, location, rows=agreements),
        )

    def maintain(self, retain_hours: float = 168.0) -> None:
        """OPTIMIZE + VACUUM every table, between batches (never beside a MERGE)."""
        from streaming.maintenance import maintain

        with self.lock:
            maintain(self.spark, self.lake, retain_hours)

    # ------------------------------------------------------------ batches

    def use_generation(self, generation: ingestion_log.Generation) -> None:
        """The checkpoint the next query runs on (a rotation starts a new one)."""
        if generation != self.generation:
            self.generation = generation
            self.app_id = None

    def query_app_id(self) -> str:
        """Delta txnAppId of this pipeline: the checkpoint's persistent query id.

        A new checkpoint (a reprocess from scratch, or the ingestion log's next
        generation) gets a new id, so Delta never mistakes its batches for old ones.
        """
        if self.app_id is None:
            checkpoint = self.generation.path
            local = ingestion_log.local_folder(checkpoint)
            if local is not None:  # no Spark job for one line of a local file
                lines = (local / "metadata").read_text().splitlines()
                first = lines[0] if lines else None
            else:
                row = self.spark.read.text(f"{checkpoint}/metadata").first()
                first = row[0] if row is not None else None
            if not first:
                raise RuntimeError(f"checkpoint {checkpoint} has no metadata")
            self.app_id = "smart-meter-" + str(json.loads(first)["id"])
        return self.app_id

    def process_batch(self, batch_df: DataFrame, spark_batch_id: int) -> None:
        """foreachBatch handler; any exception fails the query (the batch is replayed on restart).

        The lake's batch id (`raw/readings.batch_id`, Delta's `txnVersion`) is
        Spark's batch id counted on from the checkpoint generation's first batch.
        """
        batch_id = self.generation.lake_batch(spark_batch_id)
        self.wait_prepared()
        if self.stop_event is not None and self.stop_event.is_set():
            # asked to stop while the start-up ran: do not begin a (perhaps long) batch
            raise StopRequested(f"batch {batch_id} not begun: a stop was requested")
        if self.pause_event.is_set():
            # the query is being stopped to start again: the next query runs this batch
            raise StopRequested(f"batch {batch_id} not begun: the query is restarting")
        with self.lock:
            self._process(batch_df, batch_id, spark_batch_id)

    def _process(self, batch_df: DataFrame, batch_id: int, spark_batch_id: int) -> None:
        started = time.monotonic()
        self.phases = {}
        with self.timed("dimensions"):
            self.refresh_dimensions()
        assert self.dims is not None
        app_id = self.query_app_id()
        ingested_at = datetime.now(UTC).replace(tzinfo=None)
        parsed = expectations.with_expectations(
            batch_df, self.rules, self.dims.meterpoints_df, ingested_at
        ).persist()
        try:
            with self.timed("parse"):
                counts, reasons, warnings, shape = _batch_counts(parsed)
            logged = ingestion_log.batch_files(self.generation.path, spark_batch_id)
            once = _without_files_read_twice(parsed, counts["files"], logged, batch_id)
            if once is not parsed:
                try:  # `once` is built from `parsed`'s cache, which is dropped after
                    with self.timed("parse"):
                        counts, reasons, warnings, shape = _batch_counts(once)
                finally:
                    parsed.unpersist()
                    parsed = once
            if reasons:
                expectations.check_failures(reasons, self.rules, batch_id, _first_failure(parsed, self.rules))
            with self.timed("unread"):
                unread = _unread_files(parsed, logged, counts["files"])
            counts["files_unread"] = len(unread)
            # The raw (and quarantine) appends run beside the staging work; staging
            # is committed only once they are (so a crash leaves raw, then staging,
            # then presentation written, in that order). Each write is idempotent:
            # a crash anywhere is repaired by the replay.
            with ThreadPoolExecutor(max_workers=3, thread_name_prefix="lake-write") as pool:
                appends = [
                    pool.submit(
                        self._timed_call,
                        "raw",
                        self._write_raw,
                        parsed,
                        sorted(shape.columns),
                        app_id,
                        batch_id,
                        ingested_at,
                        counts["rows"],
                    )
                ]
                if counts["files_quarantined"] or counts["rows_quarantined"] or unread:
                    appends.append(
                        pool.submit(
                            self._timed_call,
                            "quarantine",
                            self._write_quarantine,
                            parsed,
                            unread,
                            app_id,
                            batch_id,
                            ingested_at,
                        )
                    )

                def appended() -> None:
                    wait_all(appends)
                    crash_point("after_raw", self.raise_at)

                staged = pool.submit(
                    self._stage, parsed, sorted(shape.dates), ingested_at, appended, counts["rows"]
                )
                wait_all([*appends, staged])
                counts.update(staged.result())
            # repeated deliveries, and rows another row of the batch superseded
            counts["duplicates"] = (
                counts["rows"]
                - counts["rows_quarantined"]
                - counts["staged_new"]
                - counts["staged_corrected"]
            )
        finally:
            parsed.unpersist()
        line: dict[str, Any] = {
            **counts,
            "batch_id": batch_id,
            "duration_s": round(time.monotonic() - started, 2),
            "phases_s": self.phases,
        }
        if reasons:
            line["quarantined_by_reason"] = reasons
        if warnings:
            line["warnings"] = warnings
        self.batches.append(line)
        log.info("batch %s", json.dumps(line, default=str))

    def _stage(
        self,
        parsed: DataFrame,
        dates: list[date],
        ingested_at: datetime,
        before_write: Callable[[], None],
        rows: int,
    ) -> dict[str, int]:
        """Latest wins within the batch, point-in-time join, staging write, presentation.

        `before_write` runs before staging is changed (it waits for the raw append);
        `rows` is the batch's row count (at least the rows staging can get).
        """
        assert self.dims is not None
        if not dates:
            before_write()
            return {"dates": 0, "staged_new": 0, "staged_corrected": 0}
        readings = transforms.latest_wins(transforms.valid_readings(parsed))
        attributed = transforms.with_attribution(readings, self.dims.segments_df, self.dims.meterpoints_df)
        staged = transforms.to_staging(attributed, F.lit(ingested_at).cast("timestamp"))
        with self.timed("staging"):
            change = sinks.merge_staging(
                self.spark, self.lake(sinks.STAGING), staged, dates, before_write, self.small_writes, rows
            )
        try:
            crash_point("after_staging", self.raise_at)
            with self.timed("presentation"):
                # Staging held nothing of these dates before: its rows of them are the
                # ones just written, so they need not be read back.
                self.refresh_presentation(dates, change.written if change.dates_were_empty else None)
        finally:
            change.release()
        return {"dates": len(dates), "staged_new": change.inserted, "staged_corrected": change.updated}

    def _write_raw(
        self,
        parsed: DataFrame,
        names: list[str],
        app_id: str,
        batch_id: int,
        ingested_at: datetime,
        rows_count: int,
    ) -> None:
        rows = transforms.row_records(parsed)
        path = self.lake(sinks.RAW_READINGS)
        columns = sinks.raw_column_names(names, partial(sinks.table_columns, self.spark, path))
        raw = rows.select(
            *[F.col("raw_values")[n].alias(columns[n]) for n in names],
            "source_file",
            "file_modification_time",
            F.lit(ingested_at).cast("timestamp").alias("ingested_at"),
            F.lit(batch_id).cast("long").alias("batch_id"),
        )
        writer = sinks.writer_for(self.small_writes, path, rows=rows_count)
        if writer == "spark":
            writer = sinks.large_writer(self.small_writes, path, raw.columns, merge_schema=True)
        sinks.append_idempotent(raw, path, app_id, batch_id, merge_schema=True, writer=writer)

    def _write_quarantine(
        self, parsed: DataFrame, unread: list[str], app_id: str, batch_id: int, ingested_at: datetime
    ) -> None:
        at = F.lit(ingested_at).cast("timestamp").alias("ingested_at")
        bad_files = (
            transforms.file_records(parsed)
            .filter(F.col("file_error").isNotNull())
            .select("source_file", "file_error")
        )
        if unread:
            bad_files = bad_files.unionByName(
                self.spark.createDataFrame(
                    [(source.normalise_path(path), source.unread_reason(path)) for path in unread],
                    "source_file string, file_error string",
                )
            )
        bad_rows = transforms.row_records(parsed).filter(F.col("reason").isNotNull())
        files_write = partial(
            sinks.append_idempotent,
            bad_files.select("source_file", F.col("file_error").alias("reason"), at),
            self.lake(sinks.QUARANTINE_FILES),
            app_id,
            batch_id,
        )
        rows_write = partial(
            sinks.append_idempotent,
            bad_rows.select(
                F.col("raw_values")["interval_start"].alias("interval_start"),
                F.col("raw_values")["consumption_delta"].alias("consumption_delta"),
                F.col("raw_values")["meterpoint_id"].alias("meterpoint_id"),
                F.col("row_json").alias("row"),
                "row_index",
                "source_file",
                "reason",
                at,
            ),
            self.lake(sinks.QUARANTINE_READINGS),
            app_id,
            batch_id,
        )
        in_parallel([files_write, rows_write])

    def refresh_presentation(self, dates: Sequence[date], new_dates_rows: DataFrame | None = None) -> None:
        """Recompute every presentation table for `dates` from staging and replace those dates.

        `new_dates_rows`: given when staging held no row of `dates` before this
        batch, so these (just written) are all its rows of them and the
        presentation tables hold none: the fresh rows are aggregated from them and
        appended, without reading staging back or scanning the tables.
        """
        append = new_dates_rows is not None
        if new_dates_rows is None:
            staging, files = sinks.staging_of_dates(
                self.spark, self.lake(sinks.STAGING), dates, self.small_writes
            )
            if files is None:  # read by Spark: once for the four aggregates
                staging = staging.persist()
        else:
            staging = new_dates_rows
        try:
            fresh = {
                sinks.HALF_HOUR: transforms.half_hour_totals(staging),
                sinks.PRODUCT_DAY: transforms.product_day_totals(staging),
                sinks.GOLD_HALF_HOUR: transforms.gold_aggregate_per_half_hour(staging),
                sinks.GOLD_PRODUCT_HALF_HOUR: transforms.gold_avg_half_hour_by_product(staging),
            }
            # Four independent tables: their writes run side by side (each commit
            # is mostly driver latency on small data).
            writer = sinks.writer_for(self.small_writes, self.cfg.lake, dates=dates)
            in_parallel(
                [
                    partial(
                        sinks.replace_dates, self.spark, self.lake(table), table, df, dates, append, writer
                    )
                    for table, df in fresh.items()
                ],
                after_first=partial(crash_point, "mid_presentation", self.raise_at),
            )
        finally:
            if not append:
                staging.unpersist()  # a no-op for rows delta-rs read


def in_parallel(tasks: Sequence[Callable[[], object]], after_first: Callable[[], None] | None = None) -> None:
    """Run independent lake writes side by side; every one finishes, every failure is
    logged and the first is raised."""
    with ThreadPoolExecutor(max_workers=len(tasks), thread_name_prefix="lake-write") as pool:
        futures = [pool.submit(task) for task in tasks]
        if after_first is not None:
            futures.append(pool.submit(lambda: (futures[0].result(), after_first())))
        wait_all(futures)


def wait_all(futures: Sequence[Future[Any]]) -> None:
    """Wait for every future; log each failure beyond the first, then raise the first.

    Nothing is lost: a write that fails beside another failing write is in the log.
    """
    errors: list[BaseException] = []
    for future in futures:
        try:
            future.result()
        except BaseException as exc:  # collected, logged and re-raised below
            if not any(exc is seen for seen in errors):
                errors.append(exc)
    for extra in errors[1:]:
        log.error("another write of the same step failed too", exc_info=extra)
    if errors:
        raise errors[0]


@dataclass
class BatchShape:
    """What the writes of a batch need to know up front: file columns, local dates."""

    columns: set[str] = field(default_factory=set)
    dates: set[date] = field(default_factory=set)


def _unread_files(parsed: DataFrame, logged: list[str] | None, seen: int) -> list[str]:
    """Files of the batch (`logged`: the source log's, None where it cannot be read)
    that produced no record: Spark's file scan skips 0-byte files (and a file may
    vanish between listing and reading). `seen`: the batch's file records."""
    if logged is None or len(logged) <= seen:
        return []
    # the scan's paths are plain (`a%20b.json` is that name); the log's are URIs
    present = {
        source.normalise_path(r[0], uri=False)
        for r in transforms.file_records(parsed).select("source_file").collect()
    }
    return sorted(p for p in logged if source.normalise_path(p) not in present)


# Characters of a Hadoop glob. Spark's scan of a batch whose files include a name
# with one of them reads the batch's other files twice (measured with Spark 4.2 on
# the local file system, in a batch read of a list of files as in a stream's batch).
_GLOB_CHARACTERS = set("[]{}*?\\")


def _without_files_read_twice(
    parsed: DataFrame, files: int, logged: list[str] | None, batch_id: int
) -> DataFrame:
    """`parsed` as it is, or, when Spark read a file of the batch more than once,
    its records with each file's records once (persisted; the caller unpersists
    `parsed`).

    Nothing is checked, and no Spark job runs, unless a logged path holds a glob
    character or the log cannot be read here (`logged` is None): then the file
    records' distinct paths are counted (one small job).
    """
    # the log's paths are URIs (`[x].json` is `%5Bx%5D.json` there); a glob character
    # anywhere in the path counts (the source also reads subfolders)
    if logged is not None and not any(_GLOB_CHARACTERS & set(unquote(p)) for p in logged):
        return parsed
    distinct = transforms.file_records(parsed).select("source_file").distinct().count()
    if distinct == files:
        return parsed
    log.warning(
        "batch %s: Spark read %d file record(s) for %d file(s) (a file name with a glob "
        "character makes its scan read the batch's other files twice): each file's "
        "records are kept once",
        batch_id,
        files,
        distinct,
    )
    return parsed.dropDuplicates(["kind", "source_file", "row_index"]).persist()


def _batch_counts(
    parsed: DataFrame,
) -> tuple[dict[str, int], dict[str, int], dict[str, int], BatchShape]:
    """One pass over the batch: files and rows; quarantined by reason code; warnings
    by rule; the file columns (raw layer) and the local dates of valid readings."""
    code = F.coalesce(
        expectations.reason_code(F.col("file_error")), expectations.reason_code(F.col("reason"))
    )
    rules = expectations.EXTRA_RULES
    local_date = F.to_date(source.micros_to_local(F.col("interval_start_local_us")))
    grouped = (
        parsed.groupBy(F.col("kind"), code.alias("code"))
        .agg(
            F.count(F.lit(1)).alias("n"),
            *[F.sum(F.array_contains("warnings", r).cast("long")).alias(r) for r in rules],
            F.array_distinct(F.flatten(F.collect_set("columns"))).alias("columns"),
            F.collect_set(local_date).alias("dates"),
        )
        .collect()
    )
    counts = {"files": 0, "files_quarantined": 0, "rows": 0, "rows_quarantined": 0}
    reasons: dict[str, int] = {}
    warnings: dict[str, int] = {}
    shape = BatchShape()
    for row in grouped:
        shape.columns.update(c for c in row["columns"] if c is not None)
        if row["kind"] == "row" and row["code"] is None:
            shape.dates.update(row["dates"])
        plural = "files" if row["kind"] == "file" else "rows"
        counts[plural] += row["n"]
        if row["code"] is not None:
            counts[f"{plural}_quarantined"] += row["n"]
            reasons[row["code"]] = reasons.get(row["code"], 0) + row["n"]
        for rule in rules:
            if row[rule]:
                warnings[rule] = warnings.get(rule, 0) + int(row[rule])
    return counts, reasons, warnings, shape


def _first_failure(parsed: DataFrame, rules: expectations.Expectations) -> str | None:
    """`file row N: reason` of the first record violating a `fail` expectation."""
    codes = [c for rule in rules.rules_with("fail") for c in expectations.CONTRACT_RULES.get(rule, (rule,))]
    if not codes:
        return None
    row = (
        parsed.filter(expectations.reason_code(F.col("reason")).isin(codes))
        .select("source_file", "row_index", "reason")
        .first()
    )
    return f"{row[0]} row {row[1]}: {row[2]}" if row else None


def _changed_meterpoints(old: dimensions.Conformed, new: dimensions.Conformed) -> DataFrame:
    """Meterpoints whose agreement segments or region differ between two dimension sets."""
    seg_cols = old.segments_df.columns
    seg_diff = (
        old.segments_df.select(*seg_cols)
        .exceptAll(new.segments_df.select(*seg_cols))
        .union(new.segments_df.select(*seg_cols).exceptAll(old.segments_df.select(*seg_cols)))
    )
    mp_diff = old.meterpoints_df.exceptAll(new.meterpoints_df).union(
        new.meterpoints_df.exceptAll(old.meterpoints_df)
    )
    return seg_diff.select("meterpoint_id").union(mp_diff.select("meterpoint_id")).distinct()
