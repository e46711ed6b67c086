"""The one place that builds the SparkSession (Delta on, settings from conf/)."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

from delta import configure_spark_with_delta_pip
from pyspark.sql import SparkSession

from streaming.config import PROJECT_ROOT, Config

DELTA_SETTINGS = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


def build_session(cfg: Config, master: str | None = None, archive_to: Path | None = None) -> SparkSession:
    """A SparkSession with Delta configured and every `spark.*` setting of `cfg`.

    The Delta jars are resolved by Spark's Ivy from Maven Central on first use
    and cached under ~/.ivy2.5.2; later starts are offline. `archive_to`: dump
    the classes this JVM loads into a class-data archive when it exits
    (`write_class_archive`).
    """
    # Python workers must run the interpreter the driver runs (the project venv)
    # and import this package, wherever the driver was started from.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ["PYTHONPATH"] = python_path_with_project(os.environ.get("PYTHONPATH", ""))
    builder = SparkSession.builder
    settings = {**cfg.spark, **DELTA_SETTINGS, "spark.sql.session.timeZone": "UTC"}
    if master:
        settings["spark.master"] = master
    jars = cached_delta_jars()
    settings = driver_settings(settings, jars, class_archive(jars), archive_to)
    for key, value in settings.items():
        builder = builder.config(key, value)
    if jars:
        # the jars Ivy resolved on the first start: skip the resolution (seconds)
        spark = builder.config("spark.jars", ",".join(jars)).getOrCreate()
    else:
        spark = configure_spark_with_delta_pip(builder).getOrCreate()
        remember_delta_jars(spark.sparkContext.getConf().get("spark.jars", ""))
    spark.sparkContext.setLogLevel("WARN")
    if not (spark.sparkContext.master or "local").startswith("local"):
        # executors on other hosts get the package shipped with the job
        spark.sparkContext.addPyFile(package_zip())
    quiet_py4j()
    return spark


def _jar_manifest() -> Path:
    # beside the interpreter: one manifest per virtual environment, never committed
    return Path(sys.prefix) / "delta-jars.txt"


def python_path_with_project(python_path: str) -> str:
    """A PYTHONPATH value that puts the project (the `streaming` package) first."""
    paths = [p for p in python_path.split(os.pathsep) if p]
    if str(PROJECT_ROOT) in paths:
        return python_path
    return os.pathsep.join([str(PROJECT_ROOT), *paths])


def cached_delta_jars() -> list[str]:
    """The Delta jars a previous start resolved, if every one is still on disk."""
    manifest = _jar_manifest()
    if not manifest.is_file():
        return []
    jars = [line.strip() for line in manifest.read_text().splitlines() if line.strip()]
    if not jars or not all(Path(j.removeprefix("file:")).is_file() for j in jars):
        return []
    return jars


def driver_settings(
    settings: dict[str, str], jars: list[str], archive: Path | None, archive_to: Path | None = None
) -> dict[str, str]:
    """`settings` with the driver JVM's class path and class-data options added.

    Delta's own jars go on the driver's class path too (spark.jars still ships
    them to executors): classes of the application class loader can be
    archived, those of Spark's added-jars loader cannot. With an archive the JVM
    maps Spark's and Delta's classes instead of loading them one by one; one it
    cannot use is ignored (start-up is just slower). Options set in conf/ are
    kept, ours go after them; a path is quoted, as Spark splits the options on
    white space.
    """
    out = dict(settings)
    if jars:
        out["spark.driver.extraClassPath"] = os.pathsep.join(
            p for p in (settings.get("spark.driver.extraClassPath", ""), *driver_class_path(jars)) if p
        )
    if archive_to is not None:
        # dumping: warnings (classes that cannot be archived) stay quiet, errors show
        options = [f'"-XX:ArchiveClassesAtExit={archive_to}"', "-Xlog:cds=error", "-Xlog:cds+dynamic=error"]
    elif archive is not None:
        options = [f'"-XX:SharedArchiveFile={archive}"', *_QUIET_CDS]
    else:
        return out
    out["spark.driver.extraJavaOptions"] = " ".join(
        o for o in (settings.get("spark.driver.extraJavaOptions", ""), *options) if o
    )
    return out


# artifacts of the Delta resolution that Spark does not ship (the others are
# older copies of Spark's own jars, which must not shadow them)
_DRIVER_CLASS_PATH_PREFIXES = ("io.delta_", "io.unitycatalog_", "com.fasterxml.jackson.datatype_")


def driver_class_path(jars: list[str]) -> list[str]:
    """Local paths of the resolved jars that may go on the driver's class path."""
    paths = [j.removeprefix("file://").removeprefix("file:") for j in jars]
    return [p for p in paths if os.path.basename(p).startswith(_DRIVER_CLASS_PATH_PREFIXES)]


def remember_delta_jars(spark_jars: str) -> None:
    jars = [j for j in spark_jars.split(",") if j]
    if any("delta-spark" in j for j in jars):
        try:
            _jar_manifest().write_text("\n".join(jars) + "\n")
        except OSError as exc:  # a read-only environment: resolve again next time
            logging.getLogger(__name__).debug("cannot record the Delta jars: %s", exc)


# a missing or stale archive is not an error: no console noise from the JVM
_QUIET_CDS = ("-Xlog:cds=off", "-Xlog:cds+dynamic=off")


def _archive_path() -> Path:
    # beside the interpreter, like the jar manifest: one per virtual environment
    return Path(sys.prefix) / "spark-classes.jsa"


def _archive_key(jars: list[str]) -> str:
    """What the archive was made for: the Java, pyspark and Delta jars in use."""
    import hashlib

    import pyspark

    # the java spark-submit runs: $JAVA_HOME/bin/java, else the one on PATH (its
    # time and size change when the JDK is upgraded in place)
    home = os.environ.get("JAVA_HOME")
    java = shutil.which("java", path=os.path.join(home, "bin")) if home else shutil.which("java")
    binary = os.path.realpath(java) if java else ""
    stat = os.stat(binary) if binary else None
    stamp = f"{binary} {stat.st_mtime_ns} {stat.st_size}" if stat else ""
    parts = [pyspark.__version__, stamp, *jars]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def class_archive(jars: list[str]) -> Path | None:
    """The class-data archive, if `make setup` wrote one for this Java, pyspark and
    these Delta jars (and SMART_METER_NO_CLASS_ARCHIVE is not set)."""
    archive = _archive_path()
    if os.environ.get("SMART_METER_NO_CLASS_ARCHIVE") or not jars or not archive.is_file():
        return None
    stamp = archive.with_suffix(".key")
    if not stamp.is_file() or stamp.read_text().strip() != _archive_key(jars):
        return None
    return archive


def write_class_archive() -> Path:
    """Run the pipeline on a small generated sample in a JVM that dumps the classes
    it loaded into a class-data archive at exit (JDK 13+ dynamic CDS).

    Later driver JVMs map that archive. Measured here (three cold starts each):
    Spark's start-up 6.3 s -> 4.4 s, then the first Delta write 10.6 s -> 8.2 s.
    """
    import subprocess
    import tempfile

    archive = _archive_path()
    partial = archive.with_suffix(".jsa.partial")
    partial.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": python_path_with_project(os.environ.get("PYTHONPATH", ""))}
    subprocess.run(
        [sys.executable, "-m", "streaming.session", "--dump-classes", str(partial)],
        check=True,
        cwd=tempfile.gettempdir(),
        env=env,
        timeout=900,
    )
    if not partial.is_file():
        raise RuntimeError(f"the JVM wrote no class archive at {partial}")
    jars = cached_delta_jars()
    os.replace(partial, archive)
    archive.with_suffix(".key").write_text(_archive_key(jars) + "\n")
    return archive


def _class_archive_workload(archive_to: Path) -> None:
    """The pipeline on a small sample twice (appends, then a MERGE of corrections)."""
    import tempfile
    from datetime import date

    from streaming import runner
    from streaming.config import load_config
    from streaming.generator import SampleSpec, write_sample

    with tempfile.TemporaryDirectory(prefix="smart-meter-classes-") as root:
        write_sample(Path(root) / "data", SampleSpec(meterpoints=20, days=2, start=date(2021, 1, 1)))
        cfg = load_config(
            readings=f"{root}/data/readings",
            db=f"{root}/data/case_study.db",
            lake=f"{root}/lake",
            checkpoints=f"{root}/checkpoints",
            spark={"spark.master": "local[2]"},
        )
        spark = build_session(cfg, archive_to=archive_to)
        runner.run(cfg, spark=spark)
        # a second delivery of one file with other values: the staging MERGE path
        first = sorted(Path(root, "data", "readings").glob("readings_*.json"))[0]
        text = first.read_text().replace("0.1", "0.2")
        Path(root, "data", "readings", "zz_correction.json").write_text(text)
        runner.run(cfg, spark=spark)
        spark.stop()
    # the JVM dumps the archive as it exits, which it does when its stdin closes
    from pyspark import SparkContext

    jvm = SparkContext._gateway.proc  # type: ignore[union-attr]
    jvm.stdin.close()
    jvm.wait(timeout=600)


def quiet_py4j() -> None:
    """py4j logs every gateway call at INFO; keep the console for the pipeline."""
    logging.getLogger("py4j").setLevel(logging.WARNING)


def package_zip() -> str:
    """The `streaming` package as a zip file, for executors of a cluster."""
    import tempfile

    folder = tempfile.mkdtemp(prefix="smart-meter-pkg-")
    base = shutil.make_archive(os.path.join(folder, "streaming"), "zip", PROJECT_ROOT, "streaming")
    return base


if __name__ == "__main__":
    # `python -m streaming.session` (make setup): start and stop a session once,
    # which makes Spark's Ivy fetch the Delta jars into its cache, then write the
    # class-data archive if there is none for these jars.
    if len(sys.argv) == 3 and sys.argv[1] == "--dump-classes":
        logging.basicConfig(level=logging.WARNING)
        _class_archive_workload(Path(sys.argv[2]))
        sys.exit(0)
    from streaming.config import load_config

    session = build_session(load_config(spark={"spark.master": "local[1]"}))
    print(f"spark {session.version} with Delta ready")
    session.stop()
    if class_archive(cached_delta_jars()) is None and not os.environ.get("SMART_METER_NO_CLASS_ARCHIVE"):
        print("writing the class-data archive of the driver JVM (faster start-up; about a minute)")
        import subprocess

        try:
            print(f"class-data archive: {write_class_archive()}")
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            # an optional speed-up: the pipeline runs the same without it
            print(
                f"WARNING: no class-data archive written ({exc}); Spark starts without it "
                "(a few seconds slower). Run `.venv/bin/python -m streaming.session` to try again.",
                file=sys.stderr,
            )
