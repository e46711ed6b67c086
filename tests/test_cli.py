"""run_stream.py refuses bad flags, missing inputs and bad settings with one line, before Spark starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from streaming.config import DEFAULT_CONFIG, PROJECT_ROOT


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    readings = tmp_path / "readings"
    readings.mkdir(exist_ok=True)
    db = tmp_path / "case_study.db"
    db.write_bytes(b"")  # exists; never opened, as every case below stops earlier
    base = ["--readings", str(readings), "--db", str(db)]
    base += ["--lake", str(tmp_path / "lake"), "--checkpoints", str(tmp_path / "checkpoints")]
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "run_stream.py"), *base, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )


def bad_config(tmp_path: Path, line: str) -> str:
    text = DEFAULT_CONFIG.read_text().replace('small_writes = "auto"', line)
    assert line in text
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("args", "exit_code", "message"),
    [
        (["--bogus"], 2, "unrecognized arguments: --bogus"),
        (["--trigger", "sometimes"], 2, "argument --trigger: invalid choice: 'sometimes'"),
        (["--readings", "no/such/folder"], 1, "readings folder not found"),
        (["--db", "no/such.db"], 1, "dimension database not found"),
        (["--config", "no/such.toml"], 1, "config file not found"),
        (["--config", "BAD_WRITER"], 1, "small_writes must be one of auto, spark, got 'delta'"),
    ],
)
def test_a_bad_flag_input_or_setting_exits_non_zero_with_one_line_and_creates_nothing(
    tmp_path: Path, args: list[str], exit_code: int, message: str
) -> None:
    args = [bad_config(tmp_path, 'small_writes = "delta"') if a == "BAD_WRITER" else a for a in args]
    done = run_cli(tmp_path, *args)
    assert done.returncode == exit_code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("run_stream.py: error: ") and message in lines[0], lines[0]
    assert not (tmp_path / "lake").exists()
    assert not (tmp_path / "checkpoints").exists()
