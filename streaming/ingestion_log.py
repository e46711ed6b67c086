"""The readings query's checkpoint (the ingestion log) and its generations.

Spark's file source keeps a log of every file it has ever read (the
checkpoint's `sources/0`, compacted every 10 batches) and reads it back whole
each time a query starts, about 0.1 s per 1,000 files on the development
machine: a daily job on a folder that grows for a year would pay tens of
seconds a run, and a watch-mode service pays it at every burst. Spark keeps no
retention for that log, because the log is also what stops a file from being
read twice.

Where processed files leave the readings folder (`archive_dir`), a fresh
checkpoint would read exactly the files not yet processed. So once the log
holds `ingestion_log_max_files` files, the pipeline starts the next generation
(when an available-now run's query has ended, before a query starts, and in
the processing-time service by restarting its query between triggers): a new
checkpoint folder beside the old one, `readings-from-batch-<N>`, whose Spark
batch 0 is the lake's batch N (so `raw/readings.batch_id` keeps counting up and
Delta's idempotent writes get a new `txnAppId`). Before that, the files of the
last batch, which Spark archives only when the next batch begins, are moved to
the archive as Spark moves them. Creating the new folder is the switch: a
crash before it leaves the old generation in use, and the rotation is tried
again at the next start.

A rotation happens only between queries, under the checkpoint lock, when the
old generation has no batch left to replay, and only where the checkpoints,
the readings and the archive are on the local file system. Retired
generations are kept (a few MB each); nothing reads them again.
"""

from __future__ import annotations

import errno
import filecmp
import json
import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from streaming import small_writes
from streaming.config import Config

log = logging.getLogger(__name__)

FIRST = "readings"  # the first generation's folder under `checkpoints`
PREFIX = "readings-from-batch-"  # later generations: PREFIX + the lake batch id of their batch 0
_LATER = re.compile(re.escape(PREFIX) + r"(\d+)")
_LOG_FILE = re.compile(r"(\d+)(\.compact)?")


@dataclass(frozen=True)
class Generation:
    """One checkpoint of the readings query: where it is, and the lake batch id of its batch 0."""

    path: str
    first_batch: int = 0

    def lake_batch(self, spark_batch: int) -> int:
        return self.first_batch + spark_batch


@dataclass(frozen=True)
class LoggedFile:
    path: str  # as the source logged it: a URL-encoded URI (file:///a/b.json)
    timestamp_ms: int
    batch_id: int


def local_folder(uri: str) -> Path | None:
    """The local path of a path or `file:` URI (as `small_writes.local_path` reads
    it: URL-decoded, a `file:` URI naming another host is not local), or None on
    any other file system."""
    local = small_writes.local_path(uri)
    return None if local is None else Path(local)


def generations(checkpoints: str) -> list[Generation]:
    """Every generation, oldest first: the first, then the later ones by their first
    batch (only the first where the checkpoints are not on the local file system)."""
    base = checkpoints.rstrip("/")
    folder = local_folder(base)
    later: list[int] = []
    if folder is not None and folder.is_dir():
        later = sorted(
            int(m.group(1)) for p in folder.iterdir() if (m := _LATER.fullmatch(p.name)) and p.is_dir()
        )
    return [Generation(f"{base}/{FIRST}", 0), *(Generation(f"{base}/{PREFIX}{n}", n) for n in later)]


def current(checkpoints: str) -> Generation:
    """The generation in use: the later generation with the greatest first batch, else the first."""
    return generations(checkpoints)[-1]


def _numbered(folder: Path) -> dict[int, Path]:
    """Spark's metadata-log files (`0`, `1`, `9.compact`, ...) by batch id (no .crc, no .tmp)."""
    if not folder.is_dir():
        return {}
    return {int(m.group(1)): p for p in folder.iterdir() if (m := _LOG_FILE.fullmatch(p.name))}


def last_batch(folder: Path) -> int | None:
    """The greatest batch id in an `offsets` or `commits` folder, or None when it is empty."""
    ids = _numbered(folder)
    return max(ids) if ids else None


def _read_log_file(path: Path) -> list[LoggedFile]:
    lines = path.read_text().splitlines()
    if not lines or lines[0].strip() != "v1":
        raise RuntimeError(f"{path}: not a file-source log of version v1 (first line {lines[:1]})")
    entries = []
    for line in lines[1:]:
        if line.strip():
            item = json.loads(line)
            entries.append(LoggedFile(str(item["path"]), int(item["timestamp"]), int(item["batchId"])))
    return entries


def _log_files(checkpoint: Path) -> list[Path]:
    """The source log's files Spark restores: the latest compaction and the batches after it."""
    files = _numbered(checkpoint / "sources" / "0")
    compacted = [b for b, p in files.items() if p.name.endswith(".compact")]
    start = max(compacted) if compacted else 0
    return [files[b] for b in sorted(files) if b >= start]


def logged_files(checkpoint: Path) -> list[LoggedFile]:
    """Every file the source log of `checkpoint` holds, as Spark restores it."""
    return [entry for path in _log_files(checkpoint) for entry in _read_log_file(path)]


def logged_count(checkpoint: Path) -> int:
    """How many files the source log holds (its entries are one line each), without parsing it."""
    return sum(
        sum(1 for line in path.read_bytes().split(b"\n")[1:] if line.strip())
        for path in _log_files(checkpoint)
    )


def source_offset(checkpoint: Path, spark_batch: int) -> int | None:
    """The file source's log offset Spark's batch `spark_batch` ends at (its
    `offsets/<batch>` file), or None when that file is not there.

    Spark's batch ids and the source log's ids are equal only until a run dies
    between the source's log write and the offsets write: the next batch then
    takes two log ids (the orphaned one and its own), and every later batch is
    one id ahead.
    """
    path = checkpoint / "offsets" / str(spark_batch)
    if not path.is_file():
        return None
    lines = path.read_text().splitlines()
    if len(lines) < 3 or not lines[0].startswith("v"):
        raise RuntimeError(f"{path}: not an offsets file with one source (lines {len(lines)})")
    value = json.loads(lines[2])  # {"logOffset": N}; plain N in old checkpoints
    return int(value["logOffset"]) if isinstance(value, dict) else int(value)


def batch_files(checkpoint: str, spark_batch: int) -> list[str] | None:
    """The files the file source logged for Spark's batch `spark_batch` (the log ids
    after the previous batch's offset, up to its own), or None where that cannot
    be told (the log is not on the local file system, or a file of it is gone):
    the batch then skips its check for unread files, and counts the scan's
    distinct files to catch a file read twice (`batch._without_files_read_twice`)."""
    folder = local_folder(checkpoint)
    if folder is None:
        return None
    end = source_offset(folder, spark_batch)
    start = source_offset(folder, spark_batch - 1) if spark_batch > 0 else -1
    if end is None or start is None:
        return None
    files = _numbered(folder / "sources" / "0")
    found: list[str] = []
    for log_id in range(start + 1, end + 1):
        if log_id not in files:
            return None
        found.extend(f.path for f in _read_log_file(files[log_id]) if f.batch_id == log_id)
    return found


def archive_path(archive_dir: Path, file: Path) -> Path:
    """Where Spark's `cleanSource=archive` puts a file: the archive folder plus the file's absolute path."""
    return archive_dir / str(file).lstrip("/")


@dataclass(frozen=True)
class Rotation:
    """What `rotate_if_due` did: the generation to use, and (when it rotated) the counts."""

    generation: Generation
    rotated: bool = False
    retired_files: int = 0
    archived: int = 0  # files of the last batch moved to the archive
    left: tuple[str, ...] = ()  # files left in the folder for the new generation to read


def rotation_blocker(cfg: Config) -> str | None:
    """Why this configuration never rotates, or None when it may."""
    if cfg.ingestion_log_max_files <= 0:
        return "ingestion_log_max_files is 0"
    if not cfg.archive_dir:
        return "processed files stay in the readings folder (archive_dir is not set)"
    for name in ("checkpoints", "readings", "archive_dir"):
        if local_folder(getattr(cfg, name)) is None:
            return f"{name} is not on the local file system"
    return None


def _due(checkpoint: Path, limit: int) -> tuple[int, list[LoggedFile]] | str | None:
    """Whether the generation at `checkpoint` is due: None when its log holds fewer
    than `limit` files; why it must wait (a text) when a batch is left to replay or
    files are logged for a batch that has not run; else its last batch and its
    logged files."""
    offsets = last_batch(checkpoint / "offsets")
    if offsets is None:
        return None  # nothing read yet
    count = logged_count(checkpoint)
    if count < limit:
        return None
    if last_batch(checkpoint / "commits") != offsets:
        return f"{count} files logged, but the last batch is to be replayed first"
    logged = logged_files(checkpoint)
    read_to = source_offset(checkpoint, offsets)
    planned = sum(1 for entry in logged if read_to is None or entry.batch_id > read_to)
    if planned:
        # the source logged files for a batch, then the run died before Spark wrote
        # that batch's offsets: Spark reads them in this generation's next batch
        return f"{planned} of {count} logged files are planned for a batch that has not run yet"
    return offsets, logged


def rotation_due(cfg: Config) -> bool:
    """A running service's check: the current generation can be retired now
    (`rotate_if_due` does it once the query has stopped)."""
    if rotation_blocker(cfg) is not None:
        return False
    checkpoint = local_folder(current(cfg.checkpoints).path)
    assert checkpoint is not None
    try:
        return isinstance(_due(checkpoint, cfg.ingestion_log_max_files), tuple)
    except FileNotFoundError:
        return False  # Spark removed a log file it had compacted, between the listing and the read


def status_line(cfg: Config) -> str:
    """One line for `--report`: the generation in use, what its log holds, and
    when (or why never) the next one starts."""
    generation = current(cfg.checkpoints)
    checkpoint = local_folder(generation.path)
    where = f"ingestion log: {generation.path} (lake batches from {generation.first_batch})"
    if checkpoint is None:
        return f"{where}; not on the local file system, not counted"
    logged = logged_count(checkpoint) if checkpoint.is_dir() else 0
    blocker = rotation_blocker(cfg)
    then = (
        f"never rotated: {blocker}"
        if blocker
        else f"a new generation once {cfg.ingestion_log_max_files:,} are logged"
    )
    return f"{where}: {logged:,} files logged; {then}"


def rotate_if_due(cfg: Config) -> Rotation:
    """Start the next generation when the current one's source log holds at least
    `ingestion_log_max_files` files (see the module's docstring). Call only with
    the checkpoint lock held and no query running on the checkpoint."""
    generation = current(cfg.checkpoints)
    if rotation_blocker(cfg) is not None:
        return Rotation(generation)
    checkpoint = local_folder(generation.path)
    assert checkpoint is not None
    started = time.monotonic()
    due = _due(checkpoint, cfg.ingestion_log_max_files)
    if due is None:
        return Rotation(generation)
    if isinstance(due, str):
        log.info("ingestion log: %s; the rotation waits for a later run", due)
        return Rotation(generation)
    offsets, logged = due
    log.info(
        "ingestion log: %d files logged (limit %d): archiving those still in the readings folder, "
        "then starting a new generation",
        len(logged),
        cfg.ingestion_log_max_files,
    )
    archive_dir = local_folder(cfg.archive_dir)
    assert archive_dir is not None
    try:
        archived, left = _archive_logged(logged, archive_dir)
    except OSError as exc:
        # the generation in use stays whole (files already moved are ones it has
        # read), so ingestion carries on; the rotation is tried at the next start
        log.warning(
            "ingestion log: not rotated, a processed file could not be archived (%s: %s); "
            "the current generation stays in use",
            type(exc).__name__,
            exc,
        )
        return Rotation(generation)
    first = generation.lake_batch(offsets) + 1
    root = local_folder(cfg.checkpoints)
    assert root is not None
    new = Generation(f"{cfg.checkpoints.rstrip('/')}/{PREFIX}{first}", first)
    (root / f"{PREFIX}{first}").mkdir()  # the switch: from here on the new generation is in use
    log.info(
        "ingestion log: rotated after %d files (at least %d); %d file(s) of the last batch archived; "
        "batches from %d are logged in %s (%.2f s)",
        len(logged),
        cfg.ingestion_log_max_files,
        archived,
        first,
        new.path,
        time.monotonic() - started,
    )
    return Rotation(new, True, len(logged), archived, tuple(left))


def _same_file(file: str, stat: os.stat_result, target: str) -> bool:
    """The archived copy is the file: the same modification time (ms), size and bytes
    (a re-delivery copied with its times kept may match the first two)."""
    try:
        archived = os.stat(target)
    except FileNotFoundError:
        return False
    same_ms = archived.st_mtime_ns // 1_000_000 == stat.st_mtime_ns // 1_000_000
    return same_ms and archived.st_size == stat.st_size and filecmp.cmp(file, target, shallow=False)


def _archive_logged(logged: list[LoggedFile], archive_dir: Path) -> tuple[int, list[str]]:
    """Move the logged files still in the readings folder to the archive, as Spark's
    cleaner would when the next batch began. A present file that is not the logged
    one (another modification time, or its archived copy is already there) is a
    re-delivery under a read name, which the old log would have skipped for good:
    it is left for the new generation to read, with a warning. An archived copy
    with the file's size and modification time is a cut-short move: the original
    is removed. An error moving a file (permissions, a full disk) is raised.

    Each folder is listed once, and only the files in it are looked at (a
    rotation after a 19,000-file batch moved them in 0.6-0.8 s)."""
    archived = 0
    left: list[str] = []
    by_folder: dict[str, list[tuple[str, LoggedFile]]] = {}
    for entry in logged:
        file = small_writes.local_path(entry.path)
        assert file is not None
        by_folder.setdefault(os.path.dirname(file), []).append((file, entry))
    for folder, entries in by_folder.items():
        try:
            present = set(os.listdir(folder))
        except FileNotFoundError:
            continue
        target_folder = os.path.join(str(archive_dir), folder.lstrip("/"))
        made = os.path.isdir(target_folder)
        in_archive = set(os.listdir(target_folder)) if made else set()
        for file, entry in entries:
            if os.path.basename(file) not in present:
                continue  # archived already (by Spark's cleaner), or removed
            try:
                stat = os.stat(file)
            except FileNotFoundError:
                continue  # Spark's cleaner moved it since the listing
            target = os.path.join(target_folder, os.path.basename(file))
            if stat.st_mtime_ns // 1_000_000 != entry.timestamp_ms:
                left.append(file)
                continue
            if os.path.basename(file) in in_archive:
                if _same_file(file, stat, target):
                    # a copy to another disk cut short before the original was
                    # deleted: finish the move
                    os.unlink(file)
                    archived += 1
                else:
                    left.append(file)
                continue
            if not made:
                os.makedirs(target_folder, exist_ok=True)
                made = True
            try:
                os.rename(file, target)
            except FileNotFoundError:
                if not os.path.lexists(target):
                    raise
                continue  # Spark's cleaner moved it in the meantime
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                shutil.move(file, target)  # the archive is on another disk: copy, then delete
            archived += 1
    if left:
        log.warning(
            "ingestion log rotation: %d file(s) in the readings folder carry the name of a file read "
            "before but are not that file (re-delivered under the same name); the new generation reads "
            "them as new deliveries: %s",
            len(left),
            ", ".join(left[:5]) + (" ..." if len(left) > 5 else ""),
        )
    return archived, left


REDELIVERED = ".redelivered-"
# parsed source-log files by path and (size, mtime): a log file never changes once
# Spark has written it, so each look at a long log parses only its new files
_PARSED: dict[Path, tuple[tuple[int, int], list[tuple[LoggedFile, Path | None]]]] = {}
_PARSED_LOCK = threading.Lock()  # a service's timer and its query starts both look


def _cached_log(checkpoint: Path) -> list[tuple[LoggedFile, Path | None]]:
    """`logged_files(checkpoint)`, each with its local path (None: not local),
    parsing only the log files not parsed before (the cache keeps the files this
    log is made of now, so it holds one log at most)."""
    with _PARSED_LOCK:
        return _cached_log_locked(checkpoint)


def _cached_log_locked(checkpoint: Path) -> list[tuple[LoggedFile, Path | None]]:
    entries: list[tuple[LoggedFile, Path | None]] = []
    paths = _log_files(checkpoint)
    for path in paths:
        stat = path.stat()
        key = (stat.st_size, stat.st_mtime_ns)
        cached = _PARSED.get(path)
        if cached is None or cached[0] != key:
            cached = (key, [(entry, local_folder(entry.path)) for entry in _read_log_file(path)])
            _PARSED[path] = cached
        entries.extend(cached[1])
    for stale in set(_PARSED) - set(paths):  # compacted, or another generation's
        del _PARSED[stale]
    return entries


def rename_redeliveries(cfg: Config, generation: Generation | None = None) -> list[Path]:
    """Give a new name to each re-delivery under a name the file source has read.

    Spark's file source reads a path once: a file placed again under a name the
    current generation's log holds (a correction delivered as the same file) would
    be skipped for good. A logged file of a committed batch whose modification time
    is no longer the one logged is such a re-delivery; it is renamed in its folder
    to `<name>.redelivered-<mtime ms>.json`, which the source reads as a new file
    in its next batch (the later batch wins, as for any correction). With
    `archive_dir` set, Spark's cleaner may have archived such a file unread (it
    moves the last batch's files when the next batch begins, whatever they hold):
    an archived copy whose time is not the logged one is moved back under that
    name. Files of a batch that has not been committed are left alone: Spark reads
    them, with whatever content they have, when it runs that batch. A file that
    cannot be renamed is left with a warning. Local folders only; returns the new
    paths.
    """
    generation = generation or current(cfg.checkpoints)
    checkpoint = local_folder(generation.path)
    if checkpoint is None or small_writes.local_path(cfg.readings) is None:
        return []
    try:
        committed = last_batch(checkpoint / "commits")
        read_to = source_offset(checkpoint, committed) if committed is not None else None
        if read_to is None:
            return []  # no batch committed: nothing read yet
        logged = _cached_log(checkpoint)
    except FileNotFoundError:
        # a log file Spark compacted away while it was read (a service's timer runs
        # beside the query): the next look reads the log again
        return []
    # a path logged twice (a lowered max_file_age): its last entry
    latest: dict[str, tuple[LoggedFile, Path | None]] = {}
    for entry, local in logged:
        if entry.path not in latest or entry.batch_id >= latest[entry.path][0].batch_id:
            latest[entry.path] = (entry, local)
    archive = Path(cfg.archive_dir) if cfg.archive_dir and small_writes.local_path(cfg.archive_dir) else None
    renamed: list[Path] = []
    for entry, path in latest.values():
        if entry.batch_id > read_to or path is None:
            continue
        found = _changed_copy(path, entry, archive)
        if found is None:
            continue
        current_path, mtime_ms = found
        target = path.with_name(f"{path.name.removesuffix('.json')}{REDELIVERED}{mtime_ms}.json")
        try:
            if target.exists():
                raise FileExistsError(f"{target} exists")
            os.rename(current_path, target)
        except FileNotFoundError:
            continue  # moved or removed since it was looked at
        except OSError as exc:  # permissions, a read-only folder, a name too long
            log.warning(
                "%s was delivered again under a name already read, but cannot be renamed for "
                "the file source to read it (%s): rename it by hand to a name not read before",
                current_path,
                exc,
            )
            continue
        log.warning(
            "%s was delivered again under a name already read (modified %d ms after the "
            "logged delivery): renamed to %s, so the next batch reads it",
            current_path,
            mtime_ms - entry.timestamp_ms,
            target.name,
        )
        renamed.append(target)
    return renamed


def _changed_copy(path: Path, entry: LoggedFile, archive: Path | None) -> tuple[Path, int] | None:
    """The logged file's copy in the folder (or, archived by Spark's cleaner, in the
    archive) whose modification time is not the logged one, and that time in ms."""
    for candidate in (path, archive_path(archive, path) if archive is not None else None):
        if candidate is None:
            continue
        try:
            mtime_ms = candidate.stat().st_mtime_ns // 1_000_000
        except OSError:
            continue  # not there (archived, removed), or unreadable
        return (candidate, mtime_ms) if mtime_ms != entry.timestamp_ms else None
    return None
