"""The one place that builds the SparkSession (Delta on, settings from conf/)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from delta import configure_spark_with_delta_pip
from pyspark.sql import SparkSession

from streaming.config import PROJECT_ROOT, Config

DELTA_SETTINGS = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


def build_session(cfg: Config, master: str | None = None) -> SparkSession:
    """A SparkSession with Delta configured and every `spark.*` setting of `cfg`.

    The Delta jars are resolved by Spark's Ivy from Maven Central on first use
    and cached under ~/.ivy2.5.2; later starts are offline.
    """
    # Python workers must run the interpreter the driver runs (the project venv)
    # and import this package, wherever the driver was started from.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(PROJECT_ROOT) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), *paths])
    builder = SparkSession.builder
    settings = {**cfg.spark, **DELTA_SETTINGS, "spark.sql.session.timeZone": "UTC"}
    if master:
        settings["spark.master"] = master
    for key, value in settings.items():
        builder = builder.config(key, value)
    jars = cached_delta_jars()
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


def cached_delta_jars() -> list[str]:
    """The Delta jars a previous start resolved, if every one is still on disk."""
    manifest = _jar_manifest()
    if not manifest.is_file():
        return []
    jars = [line.strip() for line in manifest.read_text().splitlines() if line.strip()]
    if not jars or not all(Path(j.removeprefix("file:")).is_file() for j in jars):
        return []
    return jars


def remember_delta_jars(spark_jars: str) -> None:
    jars = [j for j in spark_jars.split(",") if j]
    if any("delta-spark" in j for j in jars):
        try:
            _jar_manifest().write_text("\n".join(jars) + "\n")
        except OSError as exc:  # a read-only environment: resolve again next time
            logging.getLogger(__name__).debug("cannot record the Delta jars: %s", exc)


def quiet_py4j() -> None:
    """py4j logs every gateway call at INFO; keep the console for the pipeline."""
    logging.getLogger("py4j").setLevel(logging.WARNING)


def package_zip() -> str:
    """The `streaming` package as a zip file, for executors of a cluster."""
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="smart-meter-pkg-")
    base = shutil.make_archive(os.path.join(folder, "streaming"), "zip", PROJECT_ROOT, "streaming")
    return base


if __name__ == "__main__":
    # `python -m streaming.session`: start and stop a session once, which makes
    # Spark's Ivy fetch the Delta jars into its cache (make setup does this).
    from streaming.config import load_config

    session = build_session(load_config(spark={"spark.master": "local[1]"}))
    print(f"spark {session.version} with Delta ready")
    session.stop()
