"""Event-driven mode: watchdog tells when readings files land in the folder."""

from __future__ import annotations

import fnmatch
import threading
import time
from pathlib import Path
from types import TracebackType

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from streaming.source import READINGS_GLOB


def is_reading_file(path: str) -> bool:
    """A complete readings file: a name the source reads (`source.READINGS_GLOB`:
    `*.json`, not hidden or temporary, `.x` or `_x`)."""
    return fnmatch.fnmatchcase(Path(path).name, READINGS_GLOB)


class FileArrivals(FileSystemEventHandler):
    """Counts files created in or moved into the folder; `wait` blocks until one arrives.

    Writers place files atomically (write under a hidden name, then rename), so a
    move/rename onto a visible `*.json` name is the signal a file is complete; a
    file written in place (or copied in) counts when it is closed after writing,
    never when it is created (it may still be half written then).
    """

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = folder.removeprefix("file:")
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._last_arrival = 0.0
        self.arrived = 0
        self._observer = Observer()

    def __enter__(self) -> FileArrivals:
        self._observer.schedule(self, self.folder, recursive=False)
        self._observer.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._observer.stop()
        self._observer.join(timeout=10)

    def _arrived(self, path: str) -> None:
        # only files that land in the folder itself (not ones moved out to an archive)
        if is_reading_file(path) and Path(path).parent == Path(self.folder):
            with self._lock:
                self.arrived += 1
                self._last_arrival = time.monotonic()
            self._event.set()

    def on_moved(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._arrived(str(event.dest_path))

    def on_closed(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._arrived(str(event.src_path))

    def wait(self, timeout: float) -> bool:
        """True when files arrived since the last call (the flag is then cleared)."""
        if self._event.wait(timeout):
            self._event.clear()
            return True
        return False

    def settle(self, quiet_seconds: float, stop: threading.Event, max_wait: float = 5.0) -> None:
        """Debounce: wait until no file arrived for `quiet_seconds` (at most `max_wait`),
        so a burst of thousands of files becomes one run."""
        deadline = time.monotonic() + max_wait
        while not stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                quiet_for = time.monotonic() - self._last_arrival
            if quiet_for >= quiet_seconds:
                break
            time.sleep(min(quiet_seconds - quiet_for, 0.05) + 0.01)
        self._event.clear()
