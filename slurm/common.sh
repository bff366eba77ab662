# slurm/common.sh: the body every slurm/*.sh template sources. A template is only #SBATCH lines,
# a default recipe, and `source` of this file, so the SAME template runs the paper run on the
# cluster it was written for and a tiny job on a test cluster:
#
#   FLIP_RECIPE=recipes/test/tiny.yaml FLIP_OUT=/some/dir \
#     sbatch --wait --nodes=2 --ntasks-per-node=1 --cpus-per-task=1 --gpus-per-node=0 --time=10 \
#     slurm/vith_laion2b.sh
#
# Environment (all optional):
#   FLIP_RECIPE     recipe path (absolute, relative to the submit dir, or relative to FLIP_HOME);
#                   the template sets its paper recipe as the default
#   FLIP_OVERRIDES  space-separated key=value recipe overrides
#   FLIP_OUT        run directory (train.out_dir); default: the recipe's own out_dir
#   FLIP_HOME       the flip-scale tree to run (default: the submit dir); `flip-scale launch`
#                   points it at the code snapshot in the run directory
#   FLIP_VENV       virtualenv to activate on the nodes; else FLIP_PYTHON (an interpreter);
#                   else an already active venv / `python` on PATH; else FLIP_HOME/.venv or
#                   SLURM_SUBMIT_DIR/.venv when one exists
#   MASTER_PORT     rendezvous port (default 15000 + job id % 20000, the same on every task)
#   FLIP_MAX_RESTARTS          failures (not preemptions) after which the job is requeued, counted
#                              across requeues of the same job id (default 5); the next one ends it
#   FLIP_EXCLUDE_FAILED_NODES  1 (default): the node whose task failed first is excluded from the
#                              requeued job when enough nodes remain in the partition; 0: never
#
# Preemption: Slurm sends USR1 to this batch shell 120 s before the time limit
# (`--signal=B:USR1@120`; it may fire up to 60 s early) or when an admin/test sends
# `scancel --signal=USR1 --batch JOBID`. The shell forwards it to the job step; every rank
# finishes its step, checkpoints and exits with status 75; the shell then runs
# `scontrol requeue $SLURM_JOB_ID` and the requeued job runs this same command, which resumes
# from FLIP_OUT/checkpoints/latest. A cancelled job (SIGTERM) is never requeued.
#
# Failures: any other non-zero end of the step (a crashed or killed rank, a GPU/NCCL error, a rank
# the hang watchdog ended with 76) requeues the job the same way, except exit 2 (bad recipe or
# input, or the run directory held by another run: a retry fails the same way) and exit 74 (the
# run directory's storage is full or read-only: a requeue would wait in the queue to fail again). Each failure is one line in RUN/restarts.log (exit status of
# every task by node, from srun's own report) and in the job log; the first failing node is
# excluded from the requeued job (FLIP_EXCLUDE_FAILED_NODES); hang dumps and NCCL traces of the
# failed attempt are moved to RUN/hangs/failure<K>-job<ID>/. After FLIP_MAX_RESTARTS failures the
# job ends FAILED with one line saying so.

PREEMPTED_EXIT_CODE=75   # flip_scale.train.preemption.PREEMPTED_EXIT_CODE
HANG_EXIT_CODE=76        # flip_scale.train.watchdog.HANG_EXIT_CODE
CONFIG_EXIT_CODE=2       # flip-scale's bad-input status: nothing to retry
STORAGE_EXIT_CODE=74     # flip_scale.fileio.STORAGE_EXIT_CODE: disk full / read-only run dir, nothing to retry
FLIP_MAX_RESTARTS=${FLIP_MAX_RESTARTS:-5}
FLIP_EXCLUDE_FAILED_NODES=${FLIP_EXCLUDE_FAILED_NODES:-1}

flip_log() { echo "[flip-scale $(date '+%F %T') job ${SLURM_JOB_ID:-?}] $*"; }

if [ -z "${SLURM_JOB_ID:-}" ]; then
    echo "slurm/common.sh: not inside a Slurm job; submit a template with sbatch" >&2
    exit 2
fi

# --- the code and the interpreter ---------------------------------------------------------------
FLIP_HOME=$(cd "${FLIP_HOME:-${SLURM_SUBMIT_DIR:-.}}" && pwd)
export FLIP_HOME
# The tasks import flip_scale from FLIP_HOME (a launcher snapshot wins over an installed copy).
export PYTHONPATH="$FLIP_HOME${PYTHONPATH:+:$PYTHONPATH}"

if [ -n "${FLIP_VENV:-}" ]; then
    # shellcheck disable=SC1091
    source "$FLIP_VENV/bin/activate" || { flip_log "cannot activate FLIP_VENV=$FLIP_VENV"; exit 2; }
elif [ -z "${FLIP_PYTHON:-}" ] && [ -z "${VIRTUAL_ENV:-}" ]; then
    for venv in "$FLIP_HOME/.venv" "${SLURM_SUBMIT_DIR:-.}/.venv"; do
        if [ -x "$venv/bin/python" ]; then
            # shellcheck disable=SC1091
            source "$venv/bin/activate"
            break
        fi
    done
fi
FLIP_PYTHON=${FLIP_PYTHON:-python}

# --- the recipe and the command -----------------------------------------------------------------
FLIP_RECIPE=${FLIP_RECIPE:?set FLIP_RECIPE or a default in the template}
case "$FLIP_RECIPE" in
    /*) ;;
    *) [ -f "$FLIP_RECIPE" ] || FLIP_RECIPE="$FLIP_HOME/$FLIP_RECIPE" ;;
esac
if [ ! -f "$FLIP_RECIPE" ]; then
    flip_log "recipe $FLIP_RECIPE not found (FLIP_RECIPE, relative to $PWD or $FLIP_HOME)"
    exit 2
fi

read -r -a FLIP_OVERRIDE_ARGS <<< "${FLIP_OVERRIDES:-}"
FLIP_ARGS=(-u -m flip_scale train "$FLIP_RECIPE" "${FLIP_OVERRIDE_ARGS[@]}")
[ -n "${FLIP_OUT:-}" ] && FLIP_ARGS+=("train.out_dir=$FLIP_OUT")

# The run directory holds the restart record and the hang/NCCL dumps. Without FLIP_OUT it is the
# recipe's train.out_dir (one interpreter start here; a bad recipe already ends the job with 2).
if [ -n "${FLIP_OUT:-}" ]; then
    FLIP_RUN_DIR=$FLIP_OUT
else
    FLIP_RUN_DIR=$("$FLIP_PYTHON" -m flip_scale train "$FLIP_RECIPE" "${FLIP_OVERRIDE_ARGS[@]}" --print-config |
                   awk '/^train:/ {t = 1; next} /^[^ ]/ {t = 0} t && $1 == "out_dir:" {print $2}')
    if [ -z "$FLIP_RUN_DIR" ]; then
        flip_log "cannot resolve the recipe (see the error above); not retrying"
        exit "$CONFIG_EXIT_CODE"
    fi
fi
case "$FLIP_RUN_DIR" in /*) ;; *) FLIP_RUN_DIR="$PWD/$FLIP_RUN_DIR" ;; esac
mkdir -p "$FLIP_RUN_DIR/hangs"
FLIP_RESTARTS_LOG="$FLIP_RUN_DIR/restarts.log"

# NCCL's flight recorder: the last collectives of every rank, dumped when a collective times out
# (hangs/nccl_trace_rank_<N>; read with `python -m torch.distributed.flight_recorder.fr_trace`).
# Async error handling: a failed or timed-out collective ends the process instead of hanging it.
# TORCH_FR_* are the current names; older torch reads TORCH_NCCL_TRACE_BUFFER_SIZE instead (set it
# there yourself: recent torch prints a deprecation warning per rank when it is set).
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
export TORCH_FR_BUFFER_SIZE=${TORCH_FR_BUFFER_SIZE:-20000}
export TORCH_NCCL_DUMP_ON_TIMEOUT=${TORCH_NCCL_DUMP_ON_TIMEOUT:-1}
export TORCH_FR_DUMP_TEMP_FILE=${TORCH_FR_DUMP_TEMP_FILE:-$FLIP_RUN_DIR/hangs/nccl_trace_rank_}
export TORCH_NCCL_DEBUG_INFO_TEMP_FILE=${TORCH_NCCL_DEBUG_INFO_TEMP_FILE:-$TORCH_FR_DUMP_TEMP_FILE}

# --- rendezvous: every task derives the same pair from the Slurm variables ----------------------
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_ADDR
export MASTER_PORT=${MASTER_PORT:-$((15000 + SLURM_JOB_ID % 20000))}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# srun does not inherit --cpus-per-task from sbatch in Slurm 22.05+: pass it on explicitly.
SRUN_ARGS=(--kill-on-bad-exit=1)
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then
    export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK
    SRUN_ARGS+=(--cpus-per-task="$SLURM_CPUS_PER_TASK")
fi

flip_log "restart ${SLURM_RESTART_COUNT:-0}: ${SLURM_JOB_NUM_NODES} node(s) [$SLURM_JOB_NODELIST]," \
         "${SLURM_NTASKS} task(s), master $MASTER_ADDR:$MASTER_PORT"
flip_log "python: $(command -v "$FLIP_PYTHON"); code: $FLIP_HOME"
flip_log "srun ${SRUN_ARGS[*]} $FLIP_PYTHON ${FLIP_ARGS[*]}"

# --- run the step in the background so this shell can take USR1 while it runs -------------------
FLIP_STOP_REASON=""
flip_forward() {
    FLIP_STOP_REASON=$1
    if [ "$1" = USR1 ]; then
        flip_log "USR1: forwarding to the job step (save, exit $PREEMPTED_EXIT_CODE, requeue)"
        # srun relays USR1 to every task of its step.
        kill -s USR1 "$FLIP_SRUN_PID" 2>/dev/null
    elif [ -z "${FLIP_REQUEUEING:-}" ]; then  # (after our own requeue the TERM is expected)
        # Cancel / time limit: Slurm signals the tasks itself; do not requeue.
        flip_log "$1: job ending; the step saves if it can, no requeue"
    fi
}
trap 'flip_forward USR1' USR1
trap 'flip_forward TERM' TERM

# srun's own report of each task's end ("srun: error: NODE: task N: Exited with exit code X") and
# flip-scale's error lines are kept per attempt, so a failure can be attributed to a node and a
# bad recipe to its message; everything still goes to the log.
FLIP_STEP_REPORT="$FLIP_RUN_DIR/hangs/.srun-report-$SLURM_JOB_ID"
: > "$FLIP_STEP_REPORT"
exec {FLIP_ERR_FD}> >(awk -v F="$FLIP_STEP_REPORT" \
    '{ print > "/dev/stderr"; fflush("/dev/stderr") } /^(srun: |flip-scale: error)/ { print >> F; fflush(F) }')
FLIP_ERR_PID=$!
srun "${SRUN_ARGS[@]}" "$FLIP_PYTHON" "${FLIP_ARGS[@]}" 2>&"$FLIP_ERR_FD" &
FLIP_SRUN_PID=$!
# `wait` returns early (status > 128) whenever a trapped signal arrives: wait again until srun is
# really gone; bash keeps its exit status for the final wait.
while true; do
    wait "$FLIP_SRUN_PID"
    FLIP_RC=$?
    kill -0 "$FLIP_SRUN_PID" 2>/dev/null || break
done
exec {FLIP_ERR_FD}>&-
wait "$FLIP_ERR_PID" 2>/dev/null
flip_log "job step exited with status $FLIP_RC"

# Requeue on the trainer's status; also when USR1 was forwarded and the step ended non-zero:
# --kill-on-bad-exit tears the step down as soon as the first rank exits 75, so a slower rank
# (already checkpointed, leaving) can show up as killed and mask the 75.
FLIP_PREEMPTED=0
[ "$FLIP_RC" -eq "$PREEMPTED_EXIT_CODE" ] && FLIP_PREEMPTED=1
[ "$FLIP_STOP_REASON" = USR1 ] && [ "$FLIP_RC" -ne 0 ] && FLIP_PREEMPTED=1

flip_requeue() {
    FLIP_REQUEUEING=1
    if scontrol requeue "$SLURM_JOB_ID"; then
        # The requeued job is pending now (the controller ends this shell within KillWait):
        # a running job's node exclusion cannot be changed, a pending one's can.
        # The controller now ends this shell: slurmd sends SIGTERM to everything in the batch
        # step, the scontrol child included. It runs with TERM ignored (inherited through exec),
        # so the update completes within KillWait; the log line comes first for the same reason.
        if [ -n "${FLIP_EXCLUDE:-}" ]; then
            flip_log "requeued job excludes node(s) $FLIP_EXCLUDE"
            (trap '' TERM; exec scontrol update JobId="$SLURM_JOB_ID" ExcNodeList="$FLIP_EXCLUDE") ||
                flip_log "could not set ExcNodeList=$FLIP_EXCLUDE on the requeued job"
        fi
        exit 0
    fi
    flip_log "scontrol requeue failed (job not requeueable?); rerun the same sbatch to resume"
    exit "$FLIP_RC"
}

if [ "$FLIP_RC" -eq 0 ] || [ "$FLIP_STOP_REASON" = TERM ]; then
    exit "$FLIP_RC"
fi
if [ "$FLIP_PREEMPTED" -eq 1 ]; then
    flip_log "checkpoint saved; requeueing job $SLURM_JOB_ID (the same command resumes)"
    flip_requeue
fi

# --- a failure: what ended, where ---------------------------------------------------------------
# srun lists each task's end; the lines before "Terminating StepId" are the first failure(s), the
# rest are ranks srun stopped because of it (--kill-on-bad-exit).
FLIP_FIRST=$(awk '/Terminating StepId|_step_signal/ {exit} /^srun: error: [^ ]+: tasks? / {print}' "$FLIP_STEP_REPORT")
[ -n "$FLIP_FIRST" ] || FLIP_FIRST=$(grep -E '^srun: error: [^ ]+: tasks? ' "$FLIP_STEP_REPORT")
FLIP_CAUSE=$(grep -E '^srun: error: [^ ]+: tasks? ' "$FLIP_STEP_REPORT" |
             sed -E 's/^srun: error: //' | paste -sd ';' - | sed 's/;/; /g')
FLIP_CAUSE=${FLIP_CAUSE:-"no task report from srun (the step itself failed)"}
FLIP_SAID_WHY=$(grep -c '^flip-scale: error' "$FLIP_STEP_REPORT" || true)
rm -f "$FLIP_STEP_REPORT"

if [ "$FLIP_RC" -eq "$CONFIG_EXIT_CODE" ] || grep -q "Exited with exit code $CONFIG_EXIT_CODE\$" <<< "$FLIP_FIRST"; then
    if [ "$FLIP_SAID_WHY" -eq 0 ]; then
        # Only rank 0 prints the error; a faster rank's exit 2 can get it killed first. Say it here.
        flip_log "a task exited $CONFIG_EXIT_CODE before rank 0 said why; checking the recipe here:"
        "$FLIP_PYTHON" "${FLIP_ARGS[@]}" --print-config > /dev/null
    fi
    flip_log "configuration or input error (a task exited $CONFIG_EXIT_CODE; the message is above): not requeueing"
    exit "$CONFIG_EXIT_CODE"
fi

if [ "$FLIP_RC" -eq "$STORAGE_EXIT_CODE" ] || grep -q "Exited with exit code $STORAGE_EXIT_CODE\$" <<< "$FLIP_FIRST"; then
    flip_log "storage error (a task exited $STORAGE_EXIT_CODE: disk full or read-only; the message is above): not requeueing"
    exit "$STORAGE_EXIT_CODE"
fi

FLIP_FAILURES=$(( $(grep -c "^job=$SLURM_JOB_ID " "$FLIP_RESTARTS_LOG" 2>/dev/null || true) + 1 ))
FLIP_KIND="crash"
grep -q "Exited with exit code $HANG_EXIT_CODE\$" <<< "$FLIP_FIRST" && FLIP_KIND="hang (watchdog)"

# Keep this attempt's hang dumps and NCCL traces apart from the next attempt's.
FLIP_DUMPS=""
shopt -s nullglob
FLIP_DUMP_FILES=("$FLIP_RUN_DIR"/hangs/rank*.txt "$FLIP_RUN_DIR"/hangs/nccl_trace_rank_*)
shopt -u nullglob
if [ "${#FLIP_DUMP_FILES[@]}" -gt 0 ]; then
    FLIP_DUMPS="$FLIP_RUN_DIR/hangs/failure$FLIP_FAILURES-job$SLURM_JOB_ID"
    mkdir -p "$FLIP_DUMPS" && mv "${FLIP_DUMP_FILES[@]}" "$FLIP_DUMPS/"
fi

# The node of the first failing task, unless it was a hang: a watchdog fires on the ranks that
# WAIT for the stuck one, so their nodes are not the culprits.
FLIP_EXCLUDE=""
FLIP_EXCLUDE_NOTE=""
if [ "$FLIP_EXCLUDE_FAILED_NODES" = 1 ] && [ "$FLIP_KIND" = crash ] && [ -n "$FLIP_FIRST" ]; then
    FLIP_BAD=$(sed -E 's/^srun: error: ([^:]+): .*/\1/' <<< "$FLIP_FIRST" | sort -u | paste -sd, -)
    FLIP_PREV=$(scontrol show job -o "$SLURM_JOB_ID" | tr ' ' '\n' | sed -n 's/^ExcNodeList=//p')
    [ "$FLIP_PREV" = "(null)" ] && FLIP_PREV=""
    FLIP_ALL=$( (scontrol show hostnames "$FLIP_BAD"; [ -n "$FLIP_PREV" ] && scontrol show hostnames "$FLIP_PREV") | sort -u)
    # Nodes of the partition that can run jobs, minus the excluded ones, must still fit the job.
    FLIP_USABLE=$(sinfo -h -N -p "${SLURM_JOB_PARTITION:-}" -o '%N %t' | sort -u |
                  awk '$2 !~ /^(down|drain|drng|fail|maint|unk|boot|futr|inval|npc|pow|resv_down)/ {print $1}')
    FLIP_LEFT=$(comm -23 <(sort -u <<< "$FLIP_USABLE") <(sort -u <<< "$FLIP_ALL") | grep -c . || true)
    if [ "$FLIP_LEFT" -ge "$SLURM_JOB_NUM_NODES" ]; then
        FLIP_EXCLUDE=$(scontrol show hostlist "$(paste -sd, - <<< "$FLIP_ALL")")
        FLIP_EXCLUDE_NOTE="; excluding $FLIP_BAD"
    else
        FLIP_EXCLUDE_NOTE="; not excluding $FLIP_BAD: $FLIP_LEFT usable node(s) would remain for a $SLURM_JOB_NUM_NODES-node job"
    fi
fi

FLIP_RECORD="$FLIP_KIND, step exit $FLIP_RC: $FLIP_CAUSE${FLIP_DUMPS:+; dumps in $FLIP_DUMPS}"
if [ "$FLIP_FAILURES" -gt "$FLIP_MAX_RESTARTS" ]; then
    echo "job=$SLURM_JOB_ID failure=$FLIP_FAILURES time=$(date '+%F %T') final: $FLIP_RECORD" >> "$FLIP_RESTARTS_LOG"
    flip_log "FLIP_MAX_RESTARTS=$FLIP_MAX_RESTARTS exhausted: failure $FLIP_FAILURES ($FLIP_RECORD); not requeueing, job FAILED (history: $FLIP_RESTARTS_LOG)"
    exit "$FLIP_RC"
fi
echo "job=$SLURM_JOB_ID failure=$FLIP_FAILURES time=$(date '+%F %T') restart $FLIP_FAILURES/$FLIP_MAX_RESTARTS: $FLIP_RECORD$FLIP_EXCLUDE_NOTE" >> "$FLIP_RESTARTS_LOG"
flip_log "failure $FLIP_FAILURES/$FLIP_MAX_RESTARTS ($FLIP_RECORD)$FLIP_EXCLUDE_NOTE; requeueing job $SLURM_JOB_ID (resumes from the latest checkpoint)"
flip_requeue
