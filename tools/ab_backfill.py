"""Cold backfills of two (or more) variants, alternating, on the same files.

    .venv/bin/python tools/ab_backfill.py NAME=SPEC [NAME=SPEC ...] [--pairs 3]
                                          [--meterpoints 5000] [--days 3] [--work DIR]

A SPEC is a Spark-settings JSON object (applied over conf/pipeline.toml), or
`@DIR` for another checkout of the project (a `git worktree` of an older
commit, run with this project's virtualenv), or `@DIR:{json}` for both. A
NAME is letters, digits, `_` and `-`, each used once:

    tools/ab_backfill.py base='{}' eight='{"spark.sql.shuffle.partitions": "8"}'
    git worktree add /tmp/old HEAD~1
    tools/ab_backfill.py new='{}' old=@/tmp/old

The bench's data (generated once into `--work`, kept for later runs) is read
by a cold `run_stream.py` (available-now) per variant per round, with a fresh
lake and checkpoint each time. The variants alternate, and every other round
runs them in reverse order (A B, B A, ...), so a machine that gets busier or
quieter during the runs weighs on each alike. Each run prints its wall time,
the process tree's CPU seconds (and the JVM's by thread role), the lake
start-up's and the batches' seconds and the first batch's phases, and is added
to `results.json` in the work folder as it ends; the end prints each variant's
runs side by side. A run that fails stops the comparison (its log is named).
One comparison at a time: nothing else should run.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tomllib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streaming.bench import SEED, START, cold_run, load_average, parse_log, write_config
from streaming.config import PROJECT_ROOT, dump_toml
from streaming.generator import READINGS_DIR, SampleSpec, write_sample

NAME = re.compile(r"^[A-Za-z0-9_-]+$")
GENERATED = ".generated"  # written once the data is complete
READY = re.compile(r"lake and dimensions ready in ([0-9.]+) s")


class SpecError(ValueError):
    """A variant that cannot be run (reported before any data is generated)."""


def parse_spec(spec: str) -> tuple[Path, dict[str, str]]:
    """`{json}`, `@DIR` or `@DIR:{json}` -> (project folder, Spark settings)."""
    project, settings = PROJECT_ROOT, spec
    if spec.startswith("@"):
        folder, brace, rest = spec[1:].partition(":{")
        project, settings = Path(folder).resolve(), "{" + rest if brace else "{}"
    for needed in ("run_stream.py", "conf/pipeline.toml"):
        if not (project / needed).is_file():
            raise SpecError(f"{project} is not a checkout of the project (no {needed})")
    try:
        parsed = json.loads(settings)
    except json.JSONDecodeError as exc:
        raise SpecError(f"settings are not JSON: {settings!r} ({exc})") from None
    if not isinstance(parsed, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()
    ):
        raise SpecError(f"settings must be a JSON object of strings: {settings}")
    return project, parsed


def variant_config(work: Path, name: str, project: Path, settings: dict[str, str]) -> Path:
    """The bench's configuration of `work` with the variant's project's Spark settings."""
    base = tomllib.loads(write_config(work).read_text())
    conf = tomllib.loads((project / "conf" / "pipeline.toml").read_text())
    conf["paths"] = base["paths"]
    conf.setdefault("spark", {}).update(settings)
    path = work / "conf" / f"{name}.toml"
    path.write_text(dump_toml(conf))
    return path


def run_once(work: Path, project: Path, config: Path, log_file: Path) -> dict[str, Any]:
    for state in ("lake", "checkpoints"):
        shutil.rmtree(work / state, ignore_errors=True)
    load = load_average()[0]
    run = cold_run(config, log_file, project=project)
    if run.returncode != 0:
        raise RuntimeError(f"run_stream.py exited {run.returncode}; see {log_file}")
    batches = parse_log(run.lines)["batches"]
    ready = next((m for line in run.lines if (m := READY.search(line))), None)
    wall, memory = run.wall, run.memory
    summary = memory.summary()
    return {
        "load": load,
        "wall_s": round(wall, 1),
        "cpu_s": summary["cpu_s_sampled"],
        "jvm_cpu_by_role_s": summary["jvm_cpu_by_role_s"],
        "peak_rss_mb": summary["peak_rss_mb"],
        "start_up_s": float(ready.group(1)) if ready else None,
        "batches": len(batches),
        "batch_s": round(sum(b["duration_s"] for b in batches), 2),
        "phases_s": batches[0]["phases_s"] if batches else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", help="NAME=SPEC (see above)")
    parser.add_argument("--pairs", type=int, default=3, help="rounds (each runs every variant once), >= 1")
    parser.add_argument("--meterpoints", type=int, default=5000)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--work", default="bench_out/ab", help="data, lakes and logs (kept)")
    args = parser.parse_args()
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")

    variants = []
    for item in args.variants:
        name, sep, spec = item.partition("=")
        if not sep or not NAME.match(name):
            parser.error(f"expected NAME=SPEC with a NAME of letters, digits, _ and -, got {item!r}")
        if name in (v[0] for v in variants):
            parser.error(f"the name {name!r} is used twice")
        try:
            variants.append((name, *parse_spec(spec)))
        except SpecError as exc:
            parser.error(f"{name}: {exc}")
    work = Path(args.work).resolve() / f"{args.meterpoints}x{args.days}"
    if not (work / GENERATED).is_file():
        print(f"generating {args.meterpoints} meterpoints x {args.days} days into {work}", flush=True)
        shutil.rmtree(work / "data", ignore_errors=True)
        write_sample(
            work / "data", SampleSpec(meterpoints=args.meterpoints, days=args.days, start=START, seed=SEED)
        )
        (work / GENERATED).write_text(f"{READINGS_DIR}\n")
    configs = {name: variant_config(work, name, project, s) for name, project, s in variants}
    (work / "logs").mkdir(exist_ok=True)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in variants}
    for round_ in range(args.pairs):
        order = variants if round_ % 2 == 0 else variants[::-1]
        for name, project, _ in order:
            result = run_once(work, project, configs[name], work / "logs" / f"{name}_{round_}.log")
            results[name].append(result)
            (work / "results.json").write_text(json.dumps(results, indent=1))
            print(f"{name} #{round_}: {json.dumps(result)}", flush=True)
    print()
    for name, runs in results.items():
        walls = " / ".join(f"{r['wall_s']:.1f}" for r in runs)
        cpus = " / ".join(f"{r['cpu_s']:.0f}" for r in runs)
        batches = " / ".join(f"{r['batch_s']}" for r in runs)
        print(f"{name:>12}: wall {walls} s; tree CPU {cpus} s; batch {batches} s")


if __name__ == "__main__":
    main()
