#!/bin/bash
# Download image-text metadata into webdataset shards on a Spark standalone cluster made of this
# job's nodes: a master on the first node, one worker per node (all its cores, node-local
# scratch), `flip-scale prep download --distributor pyspark` against it. Not a training template.
# Submit:
#   FLIP_DOWNLOAD_ARGS="--preset relaion2b --url-list /p/relaion2b-meta --output /p/relaion2b-480" \
#     sbatch --nodes=16 slurm/download_spark.sh
# --output must be on a filesystem every node mounts (executors write the shards themselves).
# Environment (all optional except FLIP_DOWNLOAD_ARGS):
#   FLIP_DOWNLOAD_ARGS      arguments of `flip-scale prep download` (not --distributor/--spark-master)
#   FLIP_HOME / FLIP_VENV / FLIP_PYTHON   the tree and interpreter, as in slurm/common.sh; every
#                           node must see the same interpreter path (PYSPARK_PYTHON points at it)
#   FLIP_SPARK_SCRATCH      node-local scratch (default $TMPDIR or /tmp): Spark's work and shuffle dirs
#   FLIP_SPARK_WORKER_MEMORY  memory per worker (default: Spark's, the node's RAM less 1 GiB)
#   SPARK_MASTER_PORT / SPARK_MASTER_WEBUI_PORT   default 7077 / 8080
#   FLIP_MAX_RESTARTS       requeues after a run that left failed shards (default 5)
# Resume: a job that reaches its time limit (USR1 120 s before) or ends with failed shards is
# requeued and runs the same download again: finished shards (with a _stats.json) are kept,
# the others are redone. Exit 2 (bad input) is never retried.
# Rough cost: ~1,300 samples/s per 16-core 2 Gbps node; Re-LAION-2B-en at 480 px on 16 such
# nodes: about 1.5 days (docs/data.md).
#SBATCH --job-name=flip-download
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
set -uo pipefail

log() { echo "[flip-scale download $(date '+%F %T') job ${SLURM_JOB_ID:-?}] $*"; }
if [ -z "${SLURM_JOB_ID:-}" ]; then
    echo "slurm/download_spark.sh: not inside a Slurm job; submit it with sbatch" >&2
    exit 2
fi
if [ -z "${FLIP_DOWNLOAD_ARGS:-}" ]; then
    echo "slurm/download_spark.sh: set FLIP_DOWNLOAD_ARGS (e.g. --preset relaion2b --url-list META --output DIR)" >&2
    exit 2
fi
CONFIG_EXIT_CODE=2
FLIP_MAX_RESTARTS=${FLIP_MAX_RESTARTS:-5}

# --- the code and the interpreter (as slurm/common.sh finds them) -------------------------------
FLIP_HOME=$(cd "${FLIP_HOME:-${SLURM_SUBMIT_DIR:-.}}" && pwd)
export PYTHONPATH="$FLIP_HOME${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "${FLIP_VENV:-}" ]; then
    # shellcheck disable=SC1091
    source "$FLIP_VENV/bin/activate"
elif [ -z "${FLIP_PYTHON:-}" ] && [ -z "${VIRTUAL_ENV:-}" ] && [ -x "$FLIP_HOME/.venv/bin/python" ]; then
    # shellcheck disable=SC1091
    source "$FLIP_HOME/.venv/bin/activate"
fi
PY=${FLIP_PYTHON:-$(command -v python || command -v python3)}
# Spark's Python workers run `python3` from PATH unless told: point them at this interpreter.
export PYSPARK_PYTHON=${PYSPARK_PYTHON:-$PY}
SPARK_HOME=${SPARK_HOME:-$("$PY" -c 'from pyspark.find_spark_home import _find_spark_home as f; print(f())')} || {
    echo "slurm/download_spark.sh: pyspark is not installed for $PY (make spark, or pip install 'flip-scale[spark]')" >&2
    exit 2
}
export SPARK_HOME

# --- the cluster: master here (the first node), one worker per node -----------------------------
MASTER_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
NODES=${SLURM_JOB_NUM_NODES:-1}
UI_PORT=${SPARK_MASTER_WEBUI_PORT:-8080}
export SPARK_MASTER_URL="spark://$MASTER_HOST:${SPARK_MASTER_PORT:-7077}"
SCRATCH=${FLIP_SPARK_SCRATCH:-${TMPDIR:-/tmp}}/flip-spark-$SLURM_JOB_ID
export SCRATCH
mkdir -p "$SCRATCH"
# The pip package has no sbin/ start scripts: spark-class runs the daemons in the foreground.
SPARK_LOG_DIR="$SCRATCH/logs" "$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.master.Master \
    --host "$MASTER_HOST" --port "${SPARK_MASTER_PORT:-7077}" --webui-port "$UI_PORT" \
    >"$SCRATCH/master.log" 2>&1 &
MASTER_PID=$!
# --overlap: the workers share the first node with this batch shell (the driver).
srun --overlap --nodes="$NODES" --ntasks-per-node=1 --kill-on-bad-exit=0 bash -c '
    dir="$SCRATCH/$(hostname)"; mkdir -p "$dir/work" "$dir/local"
    export SPARK_LOCAL_DIRS="$dir/local" SPARK_WORKER_DIR="$dir/work" SPARK_LOG_DIR="$dir/logs"
    exec "$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.worker.Worker "$SPARK_MASTER_URL" \
        --cores "${SLURM_CPUS_ON_NODE:-$(nproc)}" ${FLIP_SPARK_WORKER_MEMORY:+--memory "$FLIP_SPARK_WORKER_MEMORY"} \
        --work-dir "$dir/work" >"$dir/worker.log" 2>&1' &
WORKERS_PID=$!
DOWNLOAD_PID=
stop_cluster() {
    [ -n "$DOWNLOAD_PID" ] && kill "$DOWNLOAD_PID" 2>/dev/null
    kill "$WORKERS_PID" "$MASTER_PID" 2>/dev/null
    wait "$WORKERS_PID" "$MASTER_PID" 2>/dev/null
}
trap stop_cluster EXIT

# Wait until every worker has registered (the master's JSON at :8080/json/), at most 10 minutes.
registered=0
for _ in $(seq 300); do
    registered=$("$PY" -c 'import json, sys, urllib.request as u
try:
    print(json.load(u.urlopen(sys.argv[1], timeout=5))["aliveworkers"])
except Exception:
    print(0)' "http://$MASTER_HOST:$UI_PORT/json/")
    [ "$registered" -ge "$NODES" ] && break
    kill -0 "$MASTER_PID" 2>/dev/null || { log "the Spark master exited: $(tail -n 3 "$SCRATCH/master.log")"; exit 1; }
    sleep 2
done
if [ "$registered" -lt "$NODES" ]; then
    log "only $registered of $NODES Spark workers registered after 10 minutes (logs: $SCRATCH/*/worker.log on each node)"
    exit 1
fi
log "Spark cluster $SPARK_MASTER_URL: $registered worker(s); downloading"

# --- the download; USR1 (time limit) or failed shards -> requeue, finished shards kept -----------
requeue() {
    log "$1; requeueing (finished shards are kept)"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
}
trap 'kill -TERM "$DOWNLOAD_PID" 2>/dev/null; wait "$DOWNLOAD_PID" 2>/dev/null; requeue "time limit near"' USR1
# shellcheck disable=SC2086  # FLIP_DOWNLOAD_ARGS is a list of arguments
"$PY" -m flip_scale prep download $FLIP_DOWNLOAD_ARGS --distributor pyspark --spark-master "$SPARK_MASTER_URL" &
DOWNLOAD_PID=$!
wait "$DOWNLOAD_PID"
rc=$?
DOWNLOAD_PID=
if [ "$rc" -eq 0 ]; then
    log "download complete"
    exit 0
elif [ "$rc" -eq "$CONFIG_EXIT_CODE" ]; then
    log "bad input (exit 2, the line above): not retried"
    exit 2
elif [ "${SLURM_RESTART_COUNT:-0}" -lt "$FLIP_MAX_RESTARTS" ]; then
    requeue "download ended with exit $rc (restart ${SLURM_RESTART_COUNT:-0} of $FLIP_MAX_RESTARTS)"
fi
log "download ended with exit $rc after $FLIP_MAX_RESTARTS requeues; giving up"
exit "$rc"
