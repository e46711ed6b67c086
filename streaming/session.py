"""The one place that builds the SparkSession (Delta on, settings from conf/)."""

from __future__ import annotations

import logging
import os
import sys

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
    spark = configure_spark_with_delta_pip(builder).getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    if not spark.sparkContext.master.startswith("local"):
        # executors on other hosts get the package shipped with the job
        spark.sparkContext.addPyFile(package_zip())
    quiet_py4j()
    return spark


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
