"""Static checks of every slurm/*.sh template (common.sh is the shared body, not a template):
the #SBATCH lines preemption/requeue and logging rely on, one task per GPU, the shared body
sourced after a default recipe that exists, and valid bash syntax. No Slurm needed."""
import re
import shutil
import subprocess

import pytest

from conftest import ROOT

SLURM = ROOT / "slurm"
# Training templates; download_spark.sh (a Spark cluster for `prep download`) is checked below.
DOWNLOAD = SLURM / "download_spark.sh"
TEMPLATES = sorted(p for p in SLURM.glob("*.sh") if p.name not in ("common.sh", DOWNLOAD.name))

# What slurm/common.sh's preemption/requeue story needs from each template.
REQUIRED = {
    "--nodes": r"\d+",
    "--ntasks-per-node": r"\d+",
    "--gpus-per-node": r"\d+",
    "--cpus-per-task": r"\d+",
    "--time": r"(\d+-)?\d+(:\d+){0,2}",
    "--signal": re.escape("B:USR1@120"),   # USR1 to the batch shell 120 s before the limit
    "--requeue": None,
    "--open-mode": "append",               # a requeued job appends to its log, not truncates it
    "--output": r"\S+",
}


def sbatch_options(text):
    """{option: value or None} from the #SBATCH lines (sbatch stops at the first command)."""
    opts = {}
    for line in text.splitlines():
        s = line.strip()
        if not s or (s.startswith("#") and not s.startswith("#SBATCH")):
            continue
        if not s.startswith("#SBATCH"):
            break  # sbatch ignores #SBATCH lines after the first command
        for tok in s[len("#SBATCH"):].split():
            if tok.startswith("#"):
                break
            key, _, value = tok.partition("=")
            opts[key] = value if _ else None
    return opts


def test_templates_found():
    assert len(TEMPLATES) >= 8, [p.name for p in TEMPLATES]
    assert (SLURM / "common.sh").is_file()


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_template_has_the_required_sbatch_lines(template):
    opts = sbatch_options(template.read_text())
    for key, pattern in REQUIRED.items():
        assert key in opts, f"{template.name}: no #SBATCH {key} before the first command"
        if pattern is None:
            assert opts[key] is None, f"{template.name}: {key} takes no value"
        else:
            assert opts[key] is not None and re.fullmatch(pattern, opts[key]), (template.name, key, opts[key])
    assert "--error" not in opts  # one log: shell and tasks (stderr too) append to --output
    # One task per GPU: ntasks-per-node must equal gpus-per-node.
    assert int(opts["--ntasks-per-node"]) == int(opts["--gpus-per-node"]) > 0, template.name
    assert int(opts["--nodes"]) >= 1 and int(opts["--cpus-per-task"]) >= 1


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_template_sets_an_existing_default_recipe_then_sources_common(template):
    lines = template.read_text().splitlines()
    recipe_at = [i for i, l in enumerate(lines) if re.match(r'^\s*:\s+"\$\{FLIP_RECIPE:=[^}]+\}"\s*$', l)]
    source_at = [i for i, l in enumerate(lines)
                 if re.match(r'^\s*(source|\.)\s+"?\$\{FLIP_HOME:-\$\{?SLURM_SUBMIT_DIR\}?\}/slurm/common\.sh"?\s*$', l)]
    assert len(recipe_at) == 1, f"{template.name}: expected one `: \"${{FLIP_RECIPE:=...}}\"` line"
    assert len(source_at) == 1, f"{template.name}: expected one line sourcing slurm/common.sh"
    assert recipe_at[0] < source_at[0], f"{template.name}: the default must be set before common.sh runs"
    default = re.search(r"FLIP_RECIPE:=([^}]+)\}", lines[recipe_at[0]]).group(1).strip()
    assert not default.startswith("/"), f"{template.name}: default recipe should be relative to the tree"
    assert (ROOT / default).is_file(), f"{template.name}: default recipe {default} does not exist"
    assert default.startswith("recipes/") and default.endswith(".yaml")


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
@pytest.mark.parametrize("script", TEMPLATES + [SLURM / "common.sh", DOWNLOAD], ids=lambda p: p.name)
def test_bash_syntax(script):
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def test_common_sh_exit_codes_match_the_trainer_and_nccl_diagnostics_are_on():
    """The shell decides requeue vs stop by the trainer's exit statuses: they must be the same
    numbers; the NCCL flight recorder dumps into the run directory."""
    from flip_scale.train.preemption import PREEMPTED_EXIT_CODE
    from flip_scale.train.watchdog import HANG_EXIT_CODE

    text = (SLURM / "common.sh").read_text()
    assert re.search(rf"^PREEMPTED_EXIT_CODE={PREEMPTED_EXIT_CODE}\b", text, re.M)
    assert re.search(rf"^HANG_EXIT_CODE={HANG_EXIT_CODE}\b", text, re.M)
    assert re.search(r"^CONFIG_EXIT_CODE=2\b", text, re.M)
    for var in ("TORCH_NCCL_ASYNC_ERROR_HANDLING", "TORCH_FR_BUFFER_SIZE", "TORCH_NCCL_DUMP_ON_TIMEOUT",
                "TORCH_FR_DUMP_TEMP_FILE", "TORCH_NCCL_DEBUG_INFO_TEMP_FILE"):
        assert re.search(rf"^export {var}=\$\{{{var}:-", text, re.M), var  # set unless the user set it
    assert "$FLIP_RUN_DIR/hangs/nccl_trace_rank_" in text
    assert re.search(r"^FLIP_MAX_RESTARTS=\$\{FLIP_MAX_RESTARTS:-5\}", text, re.M)
    assert re.search(r"^FLIP_EXCLUDE_FAILED_NODES=\$\{FLIP_EXCLUDE_FAILED_NODES:-1\}", text, re.M)


def test_download_spark_template_starts_a_spark_cluster_and_requeues():
    """What slurm/download_spark.sh must keep: requeue on USR1 with an appended log, the pip
    package's way to start the daemons (spark-class; no sbin/), one worker per node, a wait for
    every worker on the master's JSON, and the download against that master."""
    text = DOWNLOAD.read_text()
    opts = sbatch_options(text)
    for key in ("--requeue", "--signal", "--open-mode", "--output", "--nodes", "--ntasks-per-node"):
        assert key in opts, key
    assert opts["--signal"] == "B:USR1@120" and opts["--open-mode"] == "append" and opts["--ntasks-per-node"] == "1"
    assert "org.apache.spark.deploy.master.Master" in text and "org.apache.spark.deploy.worker.Worker" in text
    assert re.search(r"srun --overlap --nodes=\"\$NODES\" --ntasks-per-node=1", text)
    assert '/json/' in text and '"aliveworkers"' in text and '-ge "$NODES"' in text
    assert re.search(r'-m flip_scale prep download \$FLIP_DOWNLOAD_ARGS --distributor pyspark '
                     r'--spark-master "\$SPARK_MASTER_URL"', text)
    assert 'scontrol requeue "$SLURM_JOB_ID"' in text and "export PYSPARK_PYTHON=" in text
    r = subprocess.run(["bash", str(DOWNLOAD)], capture_output=True, text=True, timeout=30,
                       env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 2 and "not inside a Slurm job" in r.stderr
