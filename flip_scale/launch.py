"""`flip-scale launch`: snapshot a run (resolved config + code) and submit it to Slurm.

    flip-scale launch RECIPE [key=value ...] --template slurm/X.sh [--out DIR] [--tune TUNE_RECIPE]
                      [--dry-run] [--sbatch-arg=ARG ...] [--max-restarts N] [--keep-failed-nodes]
    flip-scale launch --study DIR_OR_LIST [key=value ...] --template slurm/X.sh --out-root ROOT [--tune-dir DIR]
                      [--tune-override KEY=VALUE ...]
    every form: [--site SITE.yaml] [--no-check]

A launch makes the run directory self-contained, the way lingua's stool does: RUN/config.yaml is
the resolved recipe the job trains (overrides applied; nothing in the job re-reads the recipe
chain), RUN/code/ is a copy of flip_scale/, recipes/ and slurm/ (plus the git commit and diff), and
the job runs that copy (FLIP_HOME=RUN/code), so later edits to the checkout do not change a
queued or requeued run. The template is the ordinary slurm/*.sh; the launcher only sets
FLIP_RECIPE / FLIP_OUT / FLIP_HOME and sbatch's --output / --job-name.

--tune chains the unmasked-tuning recipe after the run with --dependency=afterok:JOBID and
train.init_from = the run's directory; the tuning job inherits the run's site file and its
data./eval. overrides, and must use the run's vocabulary. Before anything is submitted (also
under --dry-run) every job is resolved and every file it will read is looked for (preflight.py). A study submits every row (one recipe per row, run
directory ROOT/ROW) and skips rows that finished (summary.json) or still have a job in the queue.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SNAPSHOT_DIRS = ("flip_scale", "recipes", "slurm")
SNAPSHOT_FILES = ("setup.py", "README.md")
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".pytest_cache")


class LaunchError(RuntimeError):
    pass


# ------------------------------------------------------------------ building blocks
def snapshot_code(dest: Path, repo: Path = REPO) -> Path:
    """Copy the working tree's code (uncommitted edits included) into dest/code; record git state."""
    code = dest / "code"
    tmp = dest / ".code.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for d in SNAPSHOT_DIRS:
        if (repo / d).is_dir():
            shutil.copytree(repo / d, tmp / d, ignore=IGNORE, symlinks=True)
    for f in SNAPSHOT_FILES:
        if (repo / f).is_file():
            shutil.copy2(repo / f, tmp / f)
    info = {"source": str(repo), "time": datetime.datetime.now().isoformat(timespec="seconds")}
    git = shutil.which("git")
    if git and (repo / ".git").exists():
        def _git(*args):
            r = subprocess.run([git, "-C", str(repo), *args], capture_output=True, text=True)
            return r.stdout if r.returncode == 0 else ""
        info["commit"] = _git("rev-parse", "HEAD").strip()
        diff = _git("diff", "HEAD", "--", *SNAPSHOT_DIRS)
        info["dirty"] = bool(diff.strip())
        if diff.strip():
            (tmp / "git.diff").write_text(diff)
    (tmp / "SNAPSHOT.json").write_text(json.dumps(info, indent=1) + "\n")
    # Swap in the new snapshot (a requeued job of an earlier launch reads code/ only at start).
    if code.exists():
        shutil.rmtree(code)
    os.replace(tmp, code)
    return code


def resolve_template(template: str) -> Path:
    for cand in (Path(template), REPO / template):
        if cand.is_file():
            return cand.resolve()
    raise LaunchError(f"template {template} not found (relative to {Path.cwd()} or {REPO})")


def _python_env() -> dict:
    """Point the job at this interpreter when it lives in a virtualenv (shared filesystem)."""
    if os.environ.get("FLIP_PYTHON") or os.environ.get("FLIP_VENV"):
        return {}
    if sys.prefix != sys.base_prefix:
        return {"FLIP_PYTHON": sys.executable}
    return {}


def job_in_queue(job_id: int | str) -> str:
    """The job's squeue state ('' when it has left the queue or squeue is unavailable)."""
    try:
        r = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True,
                           timeout=60)
    except (OSError, subprocess.SubprocessError):
        return ""
    return r.stdout.strip() if r.returncode == 0 else ""


def _record(run_dir: Path, entry: dict) -> None:
    path = run_dir / "launch.json"
    history = json.loads(path.read_text()) if path.is_file() else []
    history.append(entry)
    path.write_text(json.dumps(history, indent=1) + "\n")


def last_job_id(run_dir: Path):
    path = run_dir / "launch.json"
    if not path.is_file():
        return None
    try:
        history = json.loads(path.read_text())
        return history[-1].get("job_id") if history else None
    except (ValueError, AttributeError):
        return None


@dataclass
class Job:
    """One run to submit: its resolved config and where it came from."""

    recipe: str
    overrides: list
    cfg: object                       # flip_scale.config.Config, resolved (site + overrides)
    run_dir: Path
    init_from_pending: bool = False   # train.init_from is written by a job submitted with this one


# Overrides a tuning job inherits from its run: what the data is and how it is evaluated. The
# rest (mask, schedule, lr, length) is what the tuning recipe is there to change.
INHERITED_PREFIXES = ("data.", "eval.")


def inherited_overrides(overrides: list[str]) -> list[str]:
    return [o for o in overrides if o.split("=", 1)[0].strip().startswith(INHERITED_PREFIXES)]


def prepare(recipe: str, overrides: list[str], run_dir: Path | str | None, site=None,
            init_from_pending: bool = False) -> Job:
    """Resolve a recipe for submission: recipe, then the site file, then overrides."""
    from .config import load_recipe

    # Files the recipe names need only exist where the job runs; check_inputs looks for them.
    cfg = load_recipe(recipe, overrides, check_files=False, site=site)
    run_dir = Path(run_dir if run_dir is not None else cfg.train.out_dir).resolve()
    cfg.train.out_dir = str(run_dir)
    return Job(str(recipe), list(overrides), cfg, run_dir, init_from_pending)


def prepare_tuning(recipe: str, run: Job, run_overrides: list[str], tune_overrides: list[str],
                   run_dir: Path | str | None, site=None, init_from_pending: bool = True) -> Job:
    """The unmasked-tuning stage of `run`: its recipe with the run's site and data./eval.
    overrides, then the tuning-only overrides, starting from the run's weights (checked to share
    its vocabulary)."""
    job = prepare(str(recipe), [*inherited_overrides(run_overrides), *tune_overrides, f"train.init_from={run.run_dir}"],
                  run_dir, site, init_from_pending)
    check_vocab(job, source=run)
    return job


def check_vocab(job: Job, source: Job | None = None) -> None:
    """A job starting from another run's weights must use its vocabulary (train.init_from)."""
    from .preflight import init_from_vocab_mismatch, vocab_sha256

    init = job.cfg.train.init_from
    if not init:
        return
    if source is None and not Path(init).exists():
        return
    d = job.cfg.data
    mismatch = init_from_vocab_mismatch(init, vocab_sha256(d.tokenizer), d.tokenizer,
                                        source_cfg=source.cfg if source is not None else None)
    if mismatch:
        raise LaunchError(f"{job.run_dir.name}: {mismatch}")


def check_inputs(jobs: list[Job]) -> None:
    """Refuse (one line) when any file a job will read is missing as seen from this host."""
    from .preflight import missing_inputs

    problems: dict[str, list[str]] = {}  # one entry per missing file, naming the jobs that read it
    for job in jobs:
        for p in missing_inputs(job.cfg, job.init_from_pending):
            problems.setdefault(p, []).append(job.run_dir.name)
    if problems:
        def who(names):
            if len(names) == len(jobs) > 1:
                return "both jobs" if len(jobs) == 2 else f"all {len(jobs)} jobs"
            return ", ".join(names)
        listed = "; ".join(f"{p} ({who(names)})" for p, names in problems.items())
        raise LaunchError(f"missing inputs, nothing submitted (--no-check if this host cannot see the cluster's "
                          f"filesystem): {listed}")


def submit(job: Job, template: Path, sbatch_args: list[str], dry_run: bool, dependency: str | None = None,
           job_name: str | None = None, failure_env: dict | None = None) -> int | None:
    """Snapshot and sbatch one prepared run. Returns the job id (None for a dry run)."""
    from .config import write_config

    cfg, run_dir = job.cfg, job.run_dir
    name = job_name or f"flip-{run_dir.name}"
    cmd = ["sbatch", "--parsable", f"--job-name={name}", f"--output={run_dir}/slurm-%j.out",
           f"--error={run_dir}/slurm-%j.out"]
    if dependency:
        cmd.append(f"--dependency={dependency}")
    cmd += list(sbatch_args)
    # FLIP_SITE empty: config.yaml is final (it records the site it was resolved with); sbatch's
    # --export=ALL must not hand the job a site file to apply a second time.
    env = {"FLIP_RECIPE": str(run_dir / "config.yaml"), "FLIP_OUT": str(run_dir),
           "FLIP_HOME": str(run_dir / "code"), "FLIP_OVERRIDES": "", "FLIP_SITE": "", **_python_env(),
           **(failure_env or {})}
    cmd.append(str(run_dir / "code" / "slurm" / template.name))
    shown = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " " + shlex.join(cmd)
    if dry_run:
        print(f"[dry run] {shown}")
        return None
    write_config(cfg, run_dir)
    code = snapshot_code(run_dir)
    if not (code / "slurm" / template.name).is_file():  # a template from outside the checkout
        shutil.copy2(template, code / "slurm" / template.name)
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
    if r.returncode != 0:
        raise LaunchError(f"sbatch failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
    job_id = int(r.stdout.strip().split(";")[0])
    _record(run_dir, {"job_id": job_id, "time": datetime.datetime.now().isoformat(timespec="seconds"),
                      "recipe": job.recipe, "overrides": job.overrides, "template": str(template),
                      "site": cfg.site.file, "command": shown, "dependency": dependency})
    print(f"submitted job {job_id}: {run_dir}")
    return job_id


def study_rows(spec: str) -> list[Path]:
    """A directory of row recipes (*.yaml, sorted) or a comma-separated list of recipe files."""
    p = Path(spec)
    if p.is_dir():
        rows = sorted(q for q in p.glob("*.yaml") if not q.name.startswith(("base", "_")))
    else:
        rows = [Path(s) for s in spec.split(",") if s.strip()]
    missing = [str(r) for r in rows if not r.is_file()]
    if missing:
        raise LaunchError(f"study rows not found: {', '.join(missing)}")
    if not rows:
        raise LaunchError(f"no study rows (*.yaml) in {spec}")
    return rows


def _row_state(row: str, run_dir: Path) -> tuple[str, int | None]:
    """('finished' | 'queued' | '', the queued job's id)."""
    if (run_dir / "summary.json").is_file():
        print(f"skip {row}: finished")
        return "finished", None
    prev = last_job_id(run_dir)
    state = job_in_queue(prev) if prev is not None else ""
    if state:
        print(f"skip {row}: job {prev} is {state}")
        return "queued", prev
    return "", None


def launch_study(spec: str, overrides: list[str], template: Path, out_root: Path, sbatch_args: list[str],
                 dry_run: bool, failure_env: dict | None = None, tune_dir: Path | None = None, site=None,
                 tune_overrides: list[str] = (), check: bool = True) -> dict:
    """Submit every unfinished row; returns {row: job id | 'finished' | 'queued' | None (dry run)}.

    tune_dir: a folder of tuning recipes named like the rows (recipes/studies/tuning): each row's
    tuning stage is submitted too, as OUT_ROOT/ROW_tune, after the row (--dependency=afterok on
    its job, queued or new) and starting from its weights (train.init_from = the row's directory),
    like --tune for a single run. The paper's Table 8 numbers are measured after that tuning.
    Each row gets the site file's paths for its own data.dataset; its tuning stage gets the same
    site, the study's data./eval. overrides, then tune_overrides. Every job is resolved and
    checked before the first is submitted."""
    plan = []  # (label, state, queued job id, Job or None, tune Job or None, tune state)
    for recipe in study_rows(spec):
        row = recipe.stem
        run_dir = (out_root / row).resolve()
        state, job_id = _row_state(row, run_dir)
        job = prepare(str(recipe), overrides, run_dir, site)
        tune = tune_dir / recipe.name if tune_dir is not None else None
        tune_job, tune_state = None, ""
        if tune is not None and tune.is_file():
            tune_run = (out_root / f"{row}_tune").resolve()
            tune_state, _ = _row_state(f"{row}_tune", tune_run)
            if not tune_state:
                tune_job = prepare_tuning(tune, job, overrides, tune_overrides, tune_run, site,
                                          init_from_pending=state != "finished")
        plan.append((row, state, job_id, job, tune_job, tune_state))
    if check:
        check_inputs([j for _, state, _, job, tune_job, _ in plan
                      for j in ((None if state else job), tune_job) if j is not None])
    result = {}
    for row, state, job_id, job, tune_job, tune_state in plan:
        if not state:
            job_id = submit(job, template, sbatch_args, dry_run, job_name=f"flip-{row}", failure_env=failure_env)
        result[row] = state or job_id
        if tune_state:
            result[f"{row}_tune"] = tune_state
        if tune_job is None:
            continue
        dep = None if state == "finished" else (f"afterok:{job_id}" if job_id is not None else "afterok:<JOBID>")
        result[f"{row}_tune"] = submit(tune_job, template, sbatch_args, dry_run, dependency=dep,
                                       job_name=f"flip-{row}_tune", failure_env=failure_env)
    return result


# ------------------------------------------------------------------ command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flip-scale launch",
                                description="Snapshot config + code into the run directory and submit to Slurm.")
    p.add_argument("recipe", nargs="?", help="recipe YAML (omit with --study)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides (applied to every row of a study)")
    p.add_argument("--template", required=True, help="sbatch template, e.g. slurm/vitl16_laion400m.sh")
    p.add_argument("--out", help="run directory (default: the recipe's train.out_dir)")
    p.add_argument("--tune", metavar="TUNE_RECIPE",
                   help="unmasked-tuning recipe chained after the run (afterok; init_from = the run dir)")
    p.add_argument("--tune-out", help="tuning run directory (default: its recipe's out_dir, or OUT_tune with --out)")
    p.add_argument("--tune-override", action="append", default=[], metavar="KEY=VALUE",
                   help="override for the tuning job(s) only, repeatable (also with --study). A tuning job "
                        "inherits its run's site file and data./eval. overrides; the run's other overrides "
                        "(model.mask_ratio, train.*) do not leak into it")
    p.add_argument("--study", metavar="DIR_OR_LIST", help="a directory of row recipes or a comma-separated list")
    p.add_argument("--out-root", help="with --study: run directories are OUT_ROOT/ROW")
    p.add_argument("--tune-dir", help="with --study: tuning recipes named like the rows (e.g. recipes/studies/tuning); "
                                      "each row's tuning runs after it as OUT_ROOT/ROW_tune")
    p.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                   help="extra sbatch option, repeatable (e.g. --sbatch-arg=--nodes=8 --sbatch-arg=--account=X)")
    p.add_argument("--max-restarts", type=int, metavar="N",
                   help="requeue after up to N failures of the job (FLIP_MAX_RESTARTS; slurm/common.sh default 5)")
    p.add_argument("--keep-failed-nodes", action="store_true",
                   help="do not exclude the node of a failed task from the requeued job (FLIP_EXCLUDE_FAILED_NODES=0)")
    p.add_argument("--site", metavar="SITE.yaml",
                   help="the cluster's paths (default: $FLIP_SITE), applied to every job after its recipe and "
                        "before the command-line overrides; datasets: picks shards by data.dataset")
    p.add_argument("--no-check", action="store_true",
                   help="do not look for the files the jobs will read (for a submit host that cannot see the "
                        "cluster's filesystem; each job still checks at its start)")
    p.add_argument("--dry-run", action="store_true",
                   help="resolve and check every job, print what would be submitted; write nothing")
    return p


def _failure_env(args) -> dict:
    """slurm/common.sh's failure handling settings, as environment for sbatch (recorded in launch.json)."""
    env = {}
    if args.max_restarts is not None:
        if args.max_restarts < 0:
            raise LaunchError(f"--max-restarts must be >= 0, got {args.max_restarts}")
        env["FLIP_MAX_RESTARTS"] = str(args.max_restarts)
    if args.keep_failed_nodes:
        env["FLIP_EXCLUDE_FAILED_NODES"] = "0"
    return env


def main_launch(argv: list[str]) -> int:
    from .config import ConfigError, load_site, site_path

    args = build_parser().parse_intermixed_args(argv)
    try:
        template = resolve_template(args.template)
        failure_env = _failure_env(args)
        site_file = site_path(args.site)
        site = load_site(site_file) if site_file else None
        if args.study:
            if args.recipe:  # with --study every positional is an override
                args.overrides.insert(0, args.recipe)
            if not args.out_root:
                raise LaunchError("--study needs --out-root (run directories are OUT_ROOT/ROW)")
            if args.tune or args.out:
                raise LaunchError("--tune and --out apply to a single run, not to --study (use --tune-dir)")
            if args.tune_dir and not Path(args.tune_dir).is_dir():
                raise LaunchError(f"--tune-dir {args.tune_dir} is not a directory")
            if args.tune_override and not args.tune_dir:
                raise LaunchError("--tune-override with --study needs --tune-dir (there is no tuning job)")
            launch_study(args.study, args.overrides, template, Path(args.out_root), args.sbatch_arg, args.dry_run,
                         failure_env, tune_dir=Path(args.tune_dir) if args.tune_dir else None, site=site,
                         tune_overrides=args.tune_override, check=not args.no_check)
            return 0
        if not args.recipe:
            raise LaunchError("give a RECIPE or --study DIR_OR_LIST")
        if "=" in args.recipe and not Path(args.recipe).is_file():
            raise LaunchError(f"the first argument must be a recipe file, got {args.recipe!r}")
        if args.tune_override and not args.tune:
            raise LaunchError("--tune-override needs --tune (there is no tuning job)")
        run = prepare(args.recipe, args.overrides, args.out, site)
        check_vocab(run)
        jobs = [run]
        if args.tune:
            tune_out = args.tune_out or (f"{run.run_dir}_tune" if args.out else None)
            jobs.append(prepare_tuning(args.tune, run, args.overrides, args.tune_override, tune_out, site))
        if not args.no_check:
            check_inputs(jobs)
        job_id = submit(run, template, args.sbatch_arg, args.dry_run, failure_env=failure_env)
        if args.tune:
            dep = f"afterok:{job_id}" if job_id is not None else "afterok:<JOBID>"
            submit(jobs[1], template, args.sbatch_arg, args.dry_run, dependency=dep, failure_env=failure_env)
    except (LaunchError, ConfigError, FileNotFoundError) as e:
        print(f"flip-scale launch: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main_launch(sys.argv[1:]))
