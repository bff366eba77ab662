"""A SparkSession for img2dataset's pyspark distributor, on the cluster the user names.

img2dataset runs on whatever session is active and otherwise creates its own `local[N]` one,
so a download meant for a cluster silently ran every task on the driver. We create the
session first, on `--spark-master` (or SPARK_MASTER_URL), and img2dataset picks it up.

Executors are other processes, often on other machines: they resolve paths from their own
working directory (download.py hands img2dataset absolute paths) and start `python3` from
their PATH unless PYSPARK_PYTHON says otherwise - a Python without img2dataset. We point them
at this interpreter (the same venv path on every node of a cluster with a shared filesystem).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

ENV_MASTER = "SPARK_MASTER_URL"


def resolve_master(master: str | None, processes: int) -> str:
    """--spark-master, else $SPARK_MASTER_URL, else Spark local mode with `processes` cores."""
    master = master or os.environ.get(ENV_MASTER) or f"local[{processes}]"
    if not master.startswith(("local", "spark://", "yarn", "k8s://", "mesos://")):
        raise ValueError(f"--spark-master {master!r}: not a Spark master URL "
                         f"(spark://HOST:7077, local[N], yarn, k8s://...)")
    return master


@contextlib.contextmanager
def spark_session(master: str, app_name: str = "flip-scale-download",
                  conf: dict[str, str] | None = None) -> Iterator[object]:
    """Create (and finally stop) the active SparkSession that img2dataset will use.

    Created inside the download call, never at import: img2dataset starts its logger with the
    `spawn` method, which re-imports the main module in a fresh interpreter."""
    # Read by SparkContext when it starts and sent with every Python task (local mode too).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master(master).appName(app_name)
    # A shard that fails inside img2dataset is its to retry (the task returns (False, row));
    # Spark's own task retries (spark.task.maxFailures) cover lost executors and stay on.
    settings = {"spark.ui.showConsoleProgress": "false"}
    settings.update(conf or {})
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    try:
        yield spark
    finally:
        spark.stop()
