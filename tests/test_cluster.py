"""run_stream.py against a real Spark standalone cluster (one master, one worker) on 127.0.0.1.

The cluster is started from the installed pyspark's `spark-class`; the pipeline
runs with `--master spark://...`, so its parser (mapInArrow) runs in an executor
process that imports the `streaming` package shipped by `build_session`
(addPyFile). The result is compared with the independent reference exactly as
tests/test_end_to_end.py does, and the cluster is always stopped.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

import pyspark
import pytest
from conftest import ROOT, read_tables
from pyspark.sql import SparkSession
from reference import (
    TABLE_KEYS,
    assert_tables_match,
    expected_staging,
    expected_tables,
    load_deliveries,
    reconciliation_errors,
)
from service import write_config

from streaming.config import dump_toml
from streaming.generator import SampleSpec, write_sample

SPEC = SampleSpec(meterpoints=6, days=2)
TABLES = list(TABLE_KEYS)
SPARK_HOME = Path(pyspark.__file__).resolve().parent
SPARK_CLASS = SPARK_HOME / "bin" / "spark-class"
# few resources: one executor of one core and 1 GiB on the one worker
CLUSTER_SPARK = {
    "spark.executor.memory": "1g",
    "spark.executor.cores": "1",
    "spark.cores.max": "1",
}
# the master's REST submission server would take the fixed port 6066: not needed here
MASTER_OPTS = "-Dspark.master.rest.enabled=false"
MASTER_TIMEOUT = 120  # s for the master to bind its ports
WORKER_TIMEOUT = 180  # s for the worker to register
RUN_TIMEOUT = 900  # s for run_stream.py on a busy 2-core machine
# what the master logs once bound: its URL, then its web UI's port
MASTER_URL = re.compile(r"Starting Spark master at (spark://\S+)")
MASTER_UI = re.compile(r"Successfully started service 'MasterUI' on port (\d+)")


class Cluster:
    """A standalone master and one worker, each in its own process group, logs under `tmp`."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        # set by start() from the master's log: every port is chosen by the process that binds
        # it (port 0), since a port picked here and freed could be taken before the JVM binds it
        self.url = ""
        self.master_ui = 0
        self.log_dir = tmp / "spark-logs"
        self.worker_dir = tmp / "spark-work"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.worker_dir.mkdir(parents=True, exist_ok=True)
        # like another host: no PYTHONPATH to the project (the `spark` fixture put one in
        # os.environ), so executors can import `streaming` only from the zip the driver ships
        base_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self.env = {
            **base_env,
            "SPARK_HOME": str(SPARK_HOME),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "SPARK_LOG_DIR": str(self.log_dir),
            "SPARK_WORKER_DIR": str(self.worker_dir),
            "SPARK_LOCAL_DIRS": str(tmp / "spark-local"),  # executors' scratch space
            "SPARK_MASTER_OPTS": MASTER_OPTS,
            "PYSPARK_PYTHON": sys.executable,
            "PYSPARK_DRIVER_PYTHON": sys.executable,
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []

    def _start(self, name: str, *args: str) -> None:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        self.procs.append(
            subprocess.Popen(
                [str(SPARK_CLASS), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.tmp,
                start_new_session=True,  # own process group: stop() ends the JVM and its children
            )
        )

    def start(self) -> None:
        """The master on ports it chooses, then, once its log names them, the worker."""
        self._start(
            "master",
            "org.apache.spark.deploy.master.Master",
            "--host", "127.0.0.1",
            "--port", "0",
            "--webui-port", "0",
        )  # fmt: skip
        url, ui = self._wait_for_master()
        self.url, self.master_ui = url, int(ui)
        self._start(
            "worker",
            "org.apache.spark.deploy.worker.Worker",
            self.url,
            "--host", "127.0.0.1",
            "--cores", "1",
            "--memory", "1g",
            "--webui-port", "0",
            "--work-dir", str(self.worker_dir),
        )  # fmt: skip

    def _wait_for_master(self, timeout: float = MASTER_TIMEOUT) -> tuple[str, str]:
        log = self.log_dir / "master.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[0].poll() is not None:
                raise AssertionError(f"master exited ({self.procs[0].returncode}):\n{self.logs()}")
            text = log.read_text(errors="replace")
            url, ui = MASTER_URL.search(text), MASTER_UI.search(text)
            if url and ui:
                return url.group(1), ui.group(1)
            time.sleep(0.5)
        raise AssertionError(f"master named no URL and web UI after {timeout} s:\n{self.logs()}")

    def state(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.master_ui}/json/", timeout=5) as resp:
                return json.load(resp)
        except (OSError, ValueError):
            return None

    def wait_for_worker(self, timeout: float = WORKER_TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc, name in zip(self.procs, ("master", "worker"), strict=True):
                if proc.poll() is not None:
                    raise AssertionError(f"{name} exited ({proc.returncode}):\n{self.logs()}")
            state = self.state()
            alive = [w for w in (state or {}).get("workers", []) if w.get("state") == "ALIVE"]
            if alive:
                return alive[0]
            time.sleep(1)
        raise AssertionError(f"no ALIVE worker after {timeout} s:\n{self.logs()}")

    def logs(self, n: int = 40) -> str:
        parts = []
        for path in sorted(self.log_dir.glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()[-n:]
            parts.append(f"--- {path.name}\n" + "\n".join(lines))
        for path in sorted(self.worker_dir.glob("app-*/*/stderr")):
            lines = path.read_text(errors="replace").splitlines()[-n:]
            parts.append(f"--- executor {path.relative_to(self.worker_dir)}\n" + "\n".join(lines))
        return "\n".join(parts)

    def stop(self) -> None:
        """SIGTERM each process group (worker first), SIGKILL what is left after 30 s."""
        for proc in reversed(self.procs):
            _signal_group(proc, signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(30)
            # children (executor JVM) share the group: make sure none outlives the leader
            _signal_group(proc, signal.SIGKILL)
        for log in self._logs:
            log.close()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


@contextmanager
def standalone_cluster(tmp: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def processes_under(folder: Path) -> list[str]:
    """Processes (other than this one) whose working directory is inside `folder`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if Path(cwd).is_relative_to(folder):
            found.append(f"{entry.name} {cmdline[:200]}")
    return found


def cluster_config(tmp: Path) -> Path:
    """write_config's file with the cluster's [spark] settings added (spark.master stays local)."""
    path = write_config(tmp)
    conf = tomllib.loads(path.read_text())
    conf["spark"] = {**conf["spark"], **CLUSTER_SPARK}
    path.write_text(dump_toml(conf))
    return path


@pytest.mark.cluster
def test_run_stream_on_a_standalone_cluster(spark: SparkSession, tmp_path: Path) -> None:
    write_sample(tmp_path / "data", SPEC)
    deliveries = load_deliveries([tmp_path / "data" / "readings"])
    config = cluster_config(tmp_path)
    try:
        with standalone_cluster(tmp_path) as cluster:
            worker = cluster.wait_for_worker()
            assert worker["cores"] == 1, worker
            cmd = [sys.executable, str(ROOT / "run_stream.py"), "--config", str(config)]
            cmd += ["--master", cluster.url]
            # TMPDIR: session.package_zip() leaves its zip in a temp folder; keep it under tmp_path
            driver_tmp = tmp_path / "driver-tmp"
            driver_tmp.mkdir()
            env = {
                **os.environ,
                "PYTHONUNBUFFERED": "1",
                "PYSPARK_PYTHON": sys.executable,
                "TMPDIR": str(driver_tmp),
            }
            done = subprocess.run(
                cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT, env=env, cwd=tmp_path
            )
            assert done.returncode == 0, done.stderr[-4000:] + "\n" + cluster.logs()
            # the flag won over conf's local master, and the work ran in the worker's executor
            assert f"(master {cluster.url})" in done.stderr, done.stderr[-4000:]
            state = cluster.state() or {}
            apps = state.get("completedapps", []) + state.get("activeapps", [])
            assert [a["name"] for a in apps] == ["smart-meter-pipeline"], state
            executor_logs = list(cluster.worker_dir.glob("app-*/*/stderr"))
            assert executor_logs, cluster.logs()
            # the executor got the package from the driver (addPyFile), not from the project folder
            assert "/files/streaming.zip" in executor_logs[0].read_text(errors="replace"), cluster.logs()
    finally:
        # nothing the cluster started may outlive the test (executor JVMs, Python workers)
        deadline = time.monotonic() + 30
        while (left := processes_under(tmp_path)) and time.monotonic() < deadline:
            time.sleep(1)
    assert left == [], left

    lake = tmp_path / "lake"
    actual = read_tables(spark, str(lake), TABLES)
    staging = expected_staging([deliveries], "Europe/London")
    expected = expected_tables(staging, tmp_path / "data" / "case_study.db")
    assert_tables_match(actual, expected, TABLE_KEYS)
    assert reconciliation_errors(actual) == []
