"""Where a one-file micro-batch spends its time, on a warm in-process session.

    .venv/bin/python tools/one_file_batches.py [--files 6] [--meterpoints 1000] [--jfr FILE]
                                              [--spark '{"spark.key": "value"}']

An initial day of `--meterpoints` files is processed first; then files of the
next day are placed one at a time and each is processed by an available-now run
on the same session (what watch mode does, without the file watcher). Prints
each run's wall time, the JVM's CPU seconds and the batch's phases, then the
medians. `--spark` overrides settings of conf/pipeline.toml (to compare one
setting at a time); `--jfr` records a Java Flight Recorder profile of the
measured runs (`jfr print --events jdk.ExecutionSample FILE`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streaming import runner
from streaming.bench import SEED, START, jvm_thread_cpu, meterpoint_ids, process_cpu_seconds, write_day
from streaming.config import load_config
from streaming.generator import write_dimensions
from streaming.session import build_session


def place(source: Path, folder: Path) -> None:
    """Atomically, as a producer should: a hidden name, then a rename (mtime kept)."""
    hidden = folder / f".{source.name}.tmp"
    shutil.copy2(source, hidden)
    os.replace(hidden, folder / source.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--meterpoints", type=int, default=1000)
    parser.add_argument("--spark", default="{}", help="JSON object of Spark settings to override")
    parser.add_argument("--jfr", help="write a Java Flight Recorder profile of the measured runs here")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="one-file-batches-"))
    try:
        ids = meterpoint_ids(args.meterpoints, SEED)
        write_dimensions(root / "case_study.db", ids, START, 2, SEED)
        write_day(root / "readings", ids, START)
        sources = write_day(root / "incoming", ids[: args.files], START + timedelta(days=1))
        cfg = load_config(
            readings=str(root / "readings"),
            db=str(root / "case_study.db"),
            lake=str(root / "lake"),
            checkpoints=str(root / "checkpoints"),
            spark=json.loads(args.spark),
        )
        spark = build_session(cfg)
        jvm = int(spark.sparkContext._jvm.ProcessHandle.current().pid())  # type: ignore[union-attr]

        def jvm_cpu() -> float:
            return process_cpu_seconds(jvm)

        runner.run(cfg, spark=spark)  # the initial day
        if args.jfr:
            subprocess.run(
                ["jcmd", str(jvm), "JFR.start", "name=batches", f"filename={args.jfr}"], check=True
            )
        walls, cpus = [], []
        for source in sources:
            place(source, root / "readings")
            cpu, roles, wall = jvm_cpu(), jvm_thread_cpu(jvm), time.monotonic()
            pipeline = runner.run(cfg, spark=spark)
            walls.append(time.monotonic() - wall)
            cpus.append(jvm_cpu() - cpu)
            # live threads only: the JIT and GC threads are exact; task and driver
            # threads that ended during the run drop out (their share can even
            # come out negative), which the JVM's total still counts
            by_role = {r: round(s - roles.get(r, 0.0), 1) for r, s in sorted(jvm_thread_cpu(jvm).items())}
            line = pipeline.batches[-1]
            print(
                f"run {walls[-1]:.2f} s, JVM CPU {cpus[-1]:.2f} s {json.dumps(by_role)}, "
                f"batch {line['duration_s']} s, phases {json.dumps(line['phases_s'])}",
                flush=True,
            )
        if args.jfr:
            subprocess.run(["jcmd", str(jvm), "JFR.stop", "name=batches"], check=True)
        print(
            f"median of {len(walls)}: run {statistics.median(walls):.2f} s, "
            f"JVM CPU {statistics.median(cpus):.2f} s ({os.cpu_count()} cores)"
        )
        spark.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
