"""Helpers to run run_stream.py as a real process and follow its log."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

from streaming.config import dump_toml

ROOT = Path(__file__).resolve().parent.parent


def write_config(tmp: Path, pipeline: dict[str, Any] | None = None) -> Path:
    """conf/pipeline.toml with test paths under `tmp` and some [pipeline] values replaced."""
    conf = tomllib.loads((ROOT / "conf" / "pipeline.toml").read_text())
    conf["paths"] = {
        "readings": str(tmp / "data" / "readings"),
        "db": str(tmp / "data" / "case_study.db"),
        "lake": str(tmp / "lake"),
        "checkpoints": str(tmp / "checkpoints"),
    }
    conf["pipeline"].update(pipeline or {})
    conf["spark"].update({"spark.master": "local[2]", "spark.sql.shuffle.partitions": "2"})
    path = tmp / "conf" / "pipeline.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_toml(conf))
    return path


class Service:
    """run_stream.py in its own process group, its stderr collected line by line."""

    def __init__(self, config: Path, *args: str, env: dict[str, str] | None = None) -> None:
        cmd = [sys.executable, str(ROOT / "run_stream.py"), "--config", str(config), *args]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group, like a service manager gives
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 240, after: int = 0) -> int:
        """Block until a log line (index >= after) matches; return its index."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(after, len(self.lines)):
                    if regex.search(self.lines[i]):
                        return i
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise AssertionError(
                        f"process ended ({self.proc.returncode}) before {pattern!r}:\n" + self.tail()
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {pattern!r}:\n" + self.tail())
                self._cond.wait(min(left, 1.0))

    def count(self, pattern: str) -> int:
        regex = re.compile(pattern)
        with self._cond:
            return sum(1 for line in self.lines if regex.search(line))

    def terminate(self, timeout: float = 120, signals: tuple[int, ...] = (signal.SIGTERM,)) -> int:
        """SIGTERM to the process (not the group), as systemd's KillMode=mixed does
        (or the given signals, one after the other)."""
        for sig in signals:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._reader.join(timeout=10)
        return code

    def kill_tree(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.lines[-n:])


def place_file(source: Path, folder: Path, name: str | None = None) -> Path:
    """Place a file atomically: copy under a hidden name, then rename (keeps mtime)."""
    target = folder / (name or source.name)
    hidden = folder / f".{target.name}.tmp"
    hidden.write_bytes(source.read_bytes())
    st = source.stat()
    os.utime(hidden, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(hidden, target)
    return target


def batches_from_checkpoint(checkpoint: Path) -> list[list[Path]]:
    """The files of each committed micro-batch, in order, from the file source's log
    (every generation of it, `streaming.ingestion_log`).

    The log is what the pipeline processed, so the reference can replay the
    exact batch composition (it decides which delivery wins a conflict).
    """
    from streaming import ingestion_log

    batches: list[list[Path]] = []
    for generation in (Path(g.path) for g in ingestion_log.generations(str(checkpoint))):
        commits = generation / "commits"
        committed = (
            sorted(int(p.name) for p in commits.iterdir() if p.name.isdigit()) if commits.is_dir() else []
        )
        for spark_batch in committed:
            files = ingestion_log.batch_files(str(generation), spark_batch)
            assert files is not None, f"{generation}: batch {spark_batch} has no log entry"
            batches.append(sorted(p for f in files if (p := ingestion_log.local_folder(f)) is not None))
    return batches
