#!/usr/bin/env python
"""Run the smart-meter readings pipeline: parse flags, load config, start, wait."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import NoReturn

from streaming.config import TRIGGERS, ConfigError, load_config


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"run_stream.py: error: {message} (see --help)\n")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = OneLineParser(description=__doc__)
    parser.add_argument("--config", type=Path, help="TOML settings (default conf/pipeline.toml)")
    parser.add_argument("--readings", help="folder of readings *.json files")
    parser.add_argument("--db", help="SQLite dimension database")
    parser.add_argument("--lake", help="root folder of the Delta tables")
    parser.add_argument("--checkpoints", help="folder of the Spark checkpoints")
    parser.add_argument("--trigger", choices=TRIGGERS, help="default: available-now")
    parser.add_argument("--master", help="Spark master, e.g. spark://host:7077 (default from conf)")
    parser.add_argument("--report", action="store_true", help="print what each table holds at the end")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Heavy imports after the flags are checked: a bad flag answers at once.
    from streaming.runner import PipelineError, run

    try:
        cfg = load_config(
            args.config,
            readings=args.readings,
            db=args.db,
            lake=args.lake,
            checkpoints=args.checkpoints,
            trigger=args.trigger,
        )
        run(cfg, master=args.master, report=args.report)
    except (ConfigError, PipelineError) as exc:
        print(f"run_stream.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
