"""Pipeline configuration: `conf/pipeline.toml`, overridden by command-line flags."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "conf" / "pipeline.toml"
TRIGGERS = ("available-now", "processing-time", "watch")
# who commits a small batch's writes: `auto` is delta-rs where it can (streaming.small_writes)
SMALL_WRITES = ("auto", "spark")


class ConfigError(ValueError):
    """A setting is missing or invalid; the message says which and why."""


@dataclass(frozen=True)
class Config:
    readings: str
    db: str
    lake: str
    checkpoints: str
    timezone: str = "Europe/London"
    as_of: date = date(2021, 1, 1)
    trigger: str = "available-now"
    processing_interval: str = "5 seconds"
    max_file_age: str = "36500d"
    max_files_per_trigger: int = 0
    dims_check_seconds: float = 30.0
    watch_debounce_seconds: float = 0.5
    maintenance_every_hours: float = 24.0  # services: OPTIMIZE + VACUUM this often (0: never)
    archive_dir: str = ""  # non-empty: move processed files there (file source cleanSource)
    ingestion_log_max_files: int = 5000  # with archive_dir: a new checkpoint generation after this many files
    small_writes: str = "auto"  # auto: delta-rs commits small writes to a local lake; spark: Spark does
    spark: dict[str, str] = field(default_factory=dict)
    expectations: dict[str, str] = field(default_factory=dict)

    def table(self, name: str) -> str:
        """Location of a lake table such as `staging/readings`."""
        return f"{self.lake.rstrip('/')}/{name}"


def _is_uri(path: str) -> bool:
    return "://" in path or path.startswith("file:")


def resolve_path(path: str, base: Path) -> str:
    """A local path made absolute against `base`; URIs (s3a://, file:) are kept."""
    if _is_uri(path):
        return path
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _parse_as_of(value: Any) -> date:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError as exc:
        raise ConfigError(f"as_of must be a date YYYY-MM-DD, got {value!r}") from exc


def load_config(path: Path | None = None, **overrides: Any) -> Config:
    """Read the TOML file (default `conf/pipeline.toml`) and apply non-None overrides.

    Paths in the file are relative to the project root; override paths are
    relative to the current directory.
    """
    cfg_path = Path(path) if path else DEFAULT_CONFIG
    if not cfg_path.is_file():
        raise ConfigError(f"config file not found: {cfg_path}")
    try:
        raw = tomllib.loads(cfg_path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {cfg_path} is not valid TOML: {exc}") from exc
    base = cfg_path.resolve().parent.parent
    paths = raw.get("paths", {})
    pipeline = raw.get("pipeline", {})
    missing = [k for k in ("readings", "db", "lake", "checkpoints") if k not in paths]
    if missing:
        raise ConfigError(f"config file {cfg_path} lacks [paths] {', '.join(missing)}")
    cfg = Config(
        readings=resolve_path(paths["readings"], base),
        db=resolve_path(paths["db"], base),
        lake=resolve_path(paths["lake"], base),
        checkpoints=resolve_path(paths["checkpoints"], base),
        timezone=str(pipeline.get("timezone", "Europe/London")),
        as_of=_parse_as_of(pipeline.get("as_of", "2021-01-01")),
        trigger=str(pipeline.get("trigger", "available-now")),
        processing_interval=str(pipeline.get("processing_interval", "5 seconds")),
        max_file_age=str(pipeline.get("max_file_age", "36500d")),
        max_files_per_trigger=int(pipeline.get("max_files_per_trigger", 0)),
        dims_check_seconds=float(pipeline.get("dims_check_seconds", 30)),
        watch_debounce_seconds=float(pipeline.get("watch_debounce_seconds", 0.5)),
        maintenance_every_hours=float(pipeline.get("maintenance_every_hours", 24)),
        archive_dir=resolve_path(str(pipeline["archive_dir"]), base) if pipeline.get("archive_dir") else "",
        ingestion_log_max_files=int(pipeline.get("ingestion_log_max_files", 5000)),
        small_writes=str(pipeline.get("small_writes", "auto")),
        spark={str(k): str(v) for k, v in raw.get("spark", {}).items()},
        expectations={str(k): str(v) for k, v in raw.get("expectations", {}).items()},
    )
    cwd = Path.cwd()
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        if key in ("readings", "db", "lake", "checkpoints", "archive_dir") and value:
            changes[key] = resolve_path(str(value), cwd)
        elif key == "as_of":
            changes[key] = _parse_as_of(value)
        elif key == "spark":
            changes[key] = {**cfg.spark, **value}
        else:
            changes[key] = value
    cfg = replace(cfg, **changes)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Checks that need no file system: trigger name, time zone, the other settings' values."""
    if cfg.trigger not in TRIGGERS:
        raise ConfigError(f"trigger must be one of {', '.join(TRIGGERS)}, got {cfg.trigger!r}")
    try:
        ZoneInfo(cfg.timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"unknown time zone {cfg.timezone!r}") from exc
    if cfg.max_files_per_trigger < 0:
        raise ConfigError("max_files_per_trigger must be >= 0")
    if cfg.ingestion_log_max_files < 0:
        raise ConfigError("ingestion_log_max_files must be >= 0 (0: never start a new generation)")
    if cfg.small_writes not in SMALL_WRITES:
        raise ConfigError(f"small_writes must be one of {', '.join(SMALL_WRITES)}, got {cfg.small_writes!r}")
    from streaming.expectations import load_expectations

    load_expectations(cfg.expectations)  # raises ConfigError naming a bad rule


def dump_toml(conf: dict[str, dict[str, Any]]) -> str:
    """A config as TOML text (tables of scalar values), the inverse of `tomllib.loads`."""

    def key(name: str) -> str:
        return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else f'"{name}"'

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = []
    for section, values in conf.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key(k)} = {value(v)}" for k, v in values.items())
    return "\n".join(lines) + "\n"
