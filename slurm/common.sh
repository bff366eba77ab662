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
#
# Preemption: Slurm sends USR1 to this batch shell 120 s before the time limit
# (`--signal=B:USR1@120`; it may fire up to 60 s early) or when an admin/test sends
# `scancel --signal=USR1 --batch JOBID`. The shell forwards it to the job step; every rank
# finishes its step, checkpoints and exits with status 75; the shell then runs
# `scontrol requeue $SLURM_JOB_ID` and the requeued job runs this same command, which resumes
# from FLIP_OUT/checkpoints/latest. A cancelled job (SIGTERM) is never requeued.

PREEMPTED_EXIT_CODE=75   # flip_scale.train.preemption.PREEMPTED_EXIT_CODE

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
    else
        # Cancel / time limit: Slurm signals the tasks itself; do not requeue.
        flip_log "$1: job ending; the step saves if it can, no requeue"
    fi
}
trap 'flip_forward USR1' USR1
trap 'flip_forward TERM' TERM

srun "${SRUN_ARGS[@]}" "$FLIP_PYTHON" "${FLIP_ARGS[@]}" &
FLIP_SRUN_PID=$!
# `wait` returns early (status > 128) whenever a trapped signal arrives: wait again until srun is
# really gone; bash keeps its exit status for the final wait.
while true; do
    wait "$FLIP_SRUN_PID"
    FLIP_RC=$?
    kill -0 "$FLIP_SRUN_PID" 2>/dev/null || break
done
flip_log "job step exited with status $FLIP_RC"

# Requeue on the trainer's status; also when USR1 was forwarded and the step ended non-zero:
# --kill-on-bad-exit tears the step down as soon as the first rank exits 75, so a slower rank
# (already checkpointed, leaving) can show up as killed and mask the 75.
FLIP_REQUEUE=0
[ "$FLIP_RC" -eq "$PREEMPTED_EXIT_CODE" ] && FLIP_REQUEUE=1
[ "$FLIP_STOP_REASON" = USR1 ] && [ "$FLIP_RC" -ne 0 ] && FLIP_REQUEUE=1
[ "$FLIP_STOP_REASON" = TERM ] && FLIP_REQUEUE=0
if [ "$FLIP_REQUEUE" -eq 1 ]; then
    flip_log "checkpoint saved; requeueing job $SLURM_JOB_ID (the same command resumes)"
    if scontrol requeue "$SLURM_JOB_ID"; then
        exit 0   # the controller ends this incarnation and queues the job again
    fi
    flip_log "scontrol requeue failed (job not requeueable?); rerun the same sbatch to resume"
fi
exit "$FLIP_RC"
