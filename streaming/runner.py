"""The service runner: one writer per checkpoint, the three trigger modes, clean stops."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import FrameType
from typing import IO
from urllib.parse import urlsplit

from pyspark.errors import StreamingQueryException
from pyspark.sql import SparkSession
from pyspark.sql.streaming import StreamingQuery

from streaming import ingestion_log, small_writes, source
from streaming.batch import Pipeline
from streaming.config import Config

log = logging.getLogger(__name__)

QUERY_NAME = "smart_meter_readings"


class PipelineError(RuntimeError):
    """The pipeline cannot start or has failed; the message is for the operator."""


class CheckpointInUse(PipelineError):
    """Another process holds the checkpoint."""


def check_inputs(cfg: Config) -> None:
    """Fail before anything is written when an input is missing."""
    if "://" not in cfg.readings and not Path(cfg.readings.removeprefix("file:")).is_dir():
        raise PipelineError(f"readings folder not found: {cfg.readings}")
    if not Path(cfg.db).is_file():
        raise PipelineError(f"dimension database not found: {cfg.db}")


def _lock_path(checkpoints: str) -> Path:
    """`.lock` in a local checkpoint folder (`/a`, `file:/a`, `file:///a`,
    `file://localhost/a`, or a relative path); for any other location a file under
    ~/.cache named by its URI, which guards this host only."""
    local = small_writes.local_path(checkpoints)
    if local is None and urlsplit(checkpoints).scheme == "":
        local = checkpoints  # a relative path (no scheme), as Spark resolves it here
    if local is None:
        digest = hashlib.sha256(checkpoints.encode()).hexdigest()[:16]
        folder = Path.home() / ".cache" / "smart-meter" / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{digest}.lock"
    local_folder = Path(local)
    local_folder.mkdir(parents=True, exist_ok=True)
    return local_folder / ".lock"


@contextmanager
def checkpoint_lock(checkpoints: str) -> Iterator[None]:
    """Hold an exclusive lock on the checkpoint folder for the life of the process.

    `flock` is released by the kernel when the holder dies, even by kill -9, so a
    crash never locks the next run out.
    """
    path = _lock_path(checkpoints)
    handle: IO[str] = open(path, "a+")  # noqa: SIM115 - held for the whole run
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise CheckpointInUse(f"checkpoint {checkpoints} is in use by {holder}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(
            f"pid {os.getpid()} on {socket.gethostname()} since "
            f"{datetime.now(UTC).isoformat(timespec='seconds')}\n"
        )
        handle.flush()
        yield
    finally:
        handle.close()


class StopSignal:
    """SIGINT/SIGTERM set a flag the run loops watch; the batch in flight finishes.

    The Python-level handler does nothing: a handler runs in the main thread
    between two bytecodes, possibly inside another handler or inside
    `Event.set()`, and taking the event's lock there deadlocked the process on
    a second SIGTERM or a double Ctrl-C. Python's C-level handler writes the
    signal number to a pipe (`signal.set_wakeup_fd`), and a relay thread reads
    it and sets the event.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.event = threading.Event()

    def install(self) -> None:
        read_end, self._write_end = os.pipe()
        os.set_blocking(self._write_end, False)
        self._previous_fd = signal.set_wakeup_fd(self._write_end)
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        self._relay = threading.Thread(target=self._relay_signals, args=(read_end,), name="stop-signal")
        self._relay.daemon = True
        self._relay.start()

    def restore(self) -> None:
        for sig, handler in getattr(self, "_previous", {}).items():
            signal.signal(sig, handler)
        if hasattr(self, "_write_end"):
            signal.set_wakeup_fd(self._previous_fd)
            os.close(self._write_end)  # the relay reads the end of the pipe and stops
            self._relay.join(timeout=5)

    def claim(self) -> None:
        """Take the signals back after a SparkContext is created: pyspark installs its
        own SIGINT handler then (cancel every job, raise KeyboardInterrupt), which
        would cut the batch in flight short on Ctrl-C."""
        for sig in self.SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        """Nothing to do here: the wakeup pipe carries the signal to the relay thread."""

    def _relay_signals(self, read_end: int) -> None:
        try:
            while chunk := os.read(read_end, 64):
                for signum in (n for n in chunk if n in self.SIGNALS):
                    log.info("received %s: stopping after the batch in flight", signal.Signals(signum).name)
                    self.event.set()
        finally:
            os.close(read_end)

    @property
    def stopping(self) -> bool:
        return self.event.is_set()


def start_query(spark: SparkSession, cfg: Config, pipeline: Pipeline, trigger: str) -> StreamingQuery:
    """Start the readings query with the given trigger (`available-now` or `processing-time`),
    on the ingestion log's next generation when the current one is due (`ingestion_log`)."""
    generation = ingestion_log.rotate_if_due(cfg).generation
    pipeline.use_generation(generation)
    ingestion_log.rename_redeliveries(cfg, generation)
    writer = (
        source.read_readings_stream(spark, cfg)
        .writeStream.queryName(QUERY_NAME)
        .option("checkpointLocation", generation.path)
        .foreachBatch(pipeline.process_batch)
    )
    if trigger == "available-now":
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=cfg.processing_interval)
    return writer.start()


def await_query(
    query: StreamingQuery,
    stop: StopSignal,
    poll_seconds: float = 0.5,
    restart: tuple[Callable[[], bool], float, threading.Event] | None = None,
) -> bool:
    """Wait for the query to end, or stop it on a signal; raise if it failed.

    `restart` = (check, every_seconds, pause_event): `check()` is asked every
    `every_seconds`; when it says so, the query is stopped between triggers as
    on a signal (`pause_event` makes a batch that would begin refuse to) and
    True is returned, for the caller to start it again.
    """
    restarting = False
    next_check = time.monotonic() + (restart[1] if restart else 0.0)
    try:
        while query.isActive:
            if stop.stopping or restarting:
                _finish_trigger_in_flight(query, poll_seconds)
                query.stop()
                break
            # pyspark takes seconds and converts with int(timeout * 1000)
            query.awaitTermination(poll_seconds)  # type: ignore[arg-type]
            # checked between triggers only: a trigger lists the folder and logs
            # files for its batch before that batch's offsets exist
            if restart is not None and time.monotonic() >= next_check and not query.status["isTriggerActive"]:
                restarting = restart[0]()
                if restarting:
                    restart[2].set()
                next_check = time.monotonic() + restart[1]
    except StreamingQueryException as exc:
        if _stopped_before_a_batch(exc, stop, restarting):
            return restarting and not stop.stopping
        raise PipelineError(f"streaming query failed: {_first_line(exc)}") from exc
    except BaseException:
        # anything else (the restart check failing, an interrupt): stop the query, then raise
        if query.isActive:
            query.stop()
        raise
    error = query.exception()
    if error is not None:
        if _stopped_before_a_batch(error, stop, restarting):
            return restarting and not stop.stopping
        raise PipelineError(f"streaming query failed: {_first_line(error)}")
    return restarting and not stop.stopping


def _finish_trigger_in_flight(query: StreamingQuery, poll_seconds: float) -> None:
    """Wait until the query is between triggers, so the stop does not cut one short.

    `query.stop()` interrupts the query's thread: a batch whose writes were done
    but whose commit was still being written to the checkpoint would be left
    uncommitted, and replayed by the next run. A trigger that starts after the
    stop request writes nothing (the batch refuses to begin, `StopRequested`),
    so this wait ends once the trigger in flight, its commit included, is done.
    """
    waited = False
    while query.isActive and query.status["isTriggerActive"]:
        if not waited:
            log.info("waiting for the batch in flight to finish and commit")
            waited = True
        query.awaitTermination(min(poll_seconds, 0.1))  # type: ignore[arg-type]


def _error_text(error: BaseException) -> str:
    """A query failure's text: the JVM's description (with the Python error), else str()."""
    return getattr(error, "desc", None) or str(error)


def _stopped_before_a_batch(error: BaseException, stop: StopSignal, restarting: bool = False) -> bool:
    """The query ended because a batch refused to begin after a stop request, or
    while it was being restarted (a clean stop)."""
    if (stop.stopping or restarting) and "StopRequested: " in _error_text(error):
        log.info("stopped before the next batch began (the next query runs it)")
        return True
    return False


def _first_line(error: BaseException) -> str:
    """The cause of a failed query in one line (the Python error the batch raised, if any)."""
    text = _error_text(error)
    for marker in ("ExpectationFailed: ", "SimulatedCrash: ", "DimensionError: ", "Error: "):
        if marker in text:
            line = text.split(marker, 1)[1].splitlines()[0]
            return f"{marker.rstrip(': ')}: {line}"
    return text.strip().splitlines()[0] if text.strip() else repr(error)


def run_available_now(spark: SparkSession, cfg: Config, pipeline: Pipeline, stop: StopSignal) -> None:
    """Process every file not yet processed, then return.

    A due rotation of the ingestion log is done once the query has ended, so in
    watch mode it is off the path from a file's arrival to its rows (the next
    start then restores an empty log); `start_query` checks again for a run that
    ended early (a crash, a stop) and for the processing-time service.
    """
    query = start_query(spark, cfg, pipeline, "available-now")
    await_query(query, stop)
    if not stop.stopping:
        pipeline.use_generation(ingestion_log.rotate_if_due(cfg).generation)


def run_processing_time(spark: SparkSession, cfg: Config, pipeline: Pipeline, stop: StopSignal) -> None:
    """A long-running stream; a timer also picks up dimension changes between batches.

    The ingestion log is checked as often as the database: once it is due for a
    new generation, the query is stopped between triggers and started again,
    which rotates it (`start_query`). Spark's file source would otherwise compact
    a log of every file the service ever read, every 10 batches, for as long as
    it runs.
    """
    restart: tuple[Callable[[], bool], float, threading.Event] | None = (
        partial(ingestion_log.rotation_due, cfg),
        cfg.dims_check_seconds,
        pipeline.pause_event,
    )
    restarted_from: ingestion_log.Generation | None = None
    with _dimension_watch(pipeline, stop):
        while not stop.stopping:
            pipeline.pause_event.clear()  # the query before has stopped
            query = start_query(spark, cfg, pipeline, "processing-time")
            if restarted_from is not None and pipeline.generation == restarted_from:
                # not rotated (a file could not be archived, or a batch was refused
                # on the way and is replayed first): no restart loop over it
                log.warning(
                    "ingestion log: the restart did not start a new generation (see above); "
                    "this service does not try again until it is restarted"
                )
                restart = None
            if not await_query(query, stop, restart=restart):
                return
            restarted_from = pipeline.generation
            log.info("ingestion log: due for a new generation; restarting the query")


@contextmanager
def _dimension_watch(pipeline: Pipeline, stop: StopSignal) -> Iterator[None]:
    """Check the SQLite file every `dims_check_seconds` even when no files arrive.

    A stat per check is cheap; a change is reloaded under the pipeline's lock, so
    it never interleaves with a micro-batch. A failure stops the query loudly.
    """
    done = threading.Event()
    every = pipeline.cfg.maintenance_every_hours * 3600
    next_maintenance = time.monotonic() + every

    def loop() -> None:
        nonlocal next_maintenance
        while not done.wait(pipeline.cfg.dims_check_seconds):
            try:
                pipeline.wait_prepared()
                pipeline.refresh_dimensions()
                ingestion_log.rename_redeliveries(pipeline.cfg, pipeline.generation)
                if every > 0 and time.monotonic() >= next_maintenance:
                    pipeline.maintain()
                    next_maintenance = time.monotonic() + every
            except Exception:
                log.exception("background refresh or maintenance failed; stopping")
                pipeline.failure = True
                stop.event.set()
                return

    thread = threading.Thread(target=loop, name="dimension-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=60)
    if pipeline.failure:
        raise PipelineError("dimension refresh or maintenance failed (see the log above)")


def run_watch(spark: SparkSession, cfg: Config, pipeline: Pipeline, stop: StopSignal) -> None:
    """Event-driven: watchdog sees new files; each burst starts one available-now run."""
    from streaming.watch import FileArrivals

    arrivals = FileArrivals(cfg.readings)
    with arrivals, _dimension_watch(pipeline, stop):
        log.info("watching %s for new files", cfg.readings)
        # files that arrived while the service was down
        run_available_now(spark, cfg, pipeline, stop)
        while not stop.stopping:
            if not arrivals.wait(timeout=0.5):
                continue
            arrivals.settle(cfg.watch_debounce_seconds, stop.event)
            if stop.stopping:
                break
            started = time.monotonic()
            run_available_now(spark, cfg, pipeline, stop)
            log.info("watch: run finished in %.2f s", time.monotonic() - started)


MODES = {
    "available-now": run_available_now,
    "processing-time": run_processing_time,
    "watch": run_watch,
}


def run(
    cfg: Config,
    master: str | None = None,
    report: bool = False,
    spark: SparkSession | None = None,
    raise_at: str | None = None,
) -> Pipeline:
    """Check inputs, take the checkpoint lock, start Spark and run the configured mode.

    `spark` lets a caller (a test, a notebook) reuse a warm session; `raise_at`
    names a crash point where a test wants the batch to fail.
    """
    check_inputs(cfg)
    stop = StopSignal()
    stop.install()
    try:
        return _run_locked(cfg, master, report, spark, stop, raise_at)
    finally:
        stop.restore()


def _run_locked(
    cfg: Config,
    master: str | None,
    report: bool,
    spark: SparkSession | None,
    stop: StopSignal,
    raise_at: str | None,
) -> Pipeline:
    from streaming.dimensions import DimensionError
    from streaming.report import summary_lines
    from streaming.session import build_session

    with checkpoint_lock(cfg.checkpoints):
        started = time.monotonic()
        spark = spark or build_session(cfg, master=master)
        stop.claim()
        log.info(
            "spark %s up in %.1f s (master %s)",
            spark.version,
            time.monotonic() - started,
            spark.sparkContext.master,
        )
        pipeline = Pipeline(spark, cfg)
        pipeline.raise_at = raise_at
        try:
            # the lake's start-up runs beside the query's start (listing, planning)
            with pipeline.preparing(stop.event):
                if not stop.stopping:
                    MODES[cfg.trigger](spark, cfg, pipeline, stop)
        except DimensionError as exc:
            raise PipelineError(str(exc)) from exc
        log.info("done: %d batch(es) in %.1f s", len(pipeline.batches), time.monotonic() - started)
        if report:
            print("\n".join([*summary_lines(spark, pipeline.lake), ingestion_log.status_line(cfg)]))
        return pipeline
