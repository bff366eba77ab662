"""`flip-scale launch` without a cluster: what it would submit (--dry-run), argument errors, and
the study's skip rules. The real submissions run in tests/test_slurm.py."""
import json

import pytest

from conftest import ROOT
from flip_scale.launch import main_launch, snapshot_code, study_rows

TEMPLATE = "slurm/vith_laion2b.sh"


def test_dry_run_shows_the_snapshot_submission_and_the_chained_tuning_job(tmp_path, capsys):
    rc = main_launch([str(ROOT / "recipes/test/tiny.yaml"), "train.seed=3", "--template", TEMPLATE,
                      "--out", str(tmp_path / "run"), "--tune", str(ROOT / "recipes/test/tiny.yaml"),
                      "--tune-override=model.mask_ratio=0", "--sbatch-arg=--nodes=2", "--dry-run"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0 and len(out) == 2
    run, tune = out
    assert f"FLIP_RECIPE={tmp_path}/run/config.yaml FLIP_OUT={tmp_path}/run FLIP_HOME={tmp_path}/run/code" in run
    assert f"--output={tmp_path}/run/slurm-%j.out" in run and "--nodes=2" in run
    assert run.endswith(f"{tmp_path}/run/code/slurm/vith_laion2b.sh")
    assert f"FLIP_OUT={tmp_path}/run_tune" in tune and "--dependency=afterok:" in tune
    assert not (tmp_path / "run").exists(), "a dry run must not write"


def test_snapshot_copies_the_code_and_records_git_state(tmp_path):
    code = snapshot_code(tmp_path)
    assert (code / "flip_scale" / "launch.py").is_file() and (code / "slurm" / "common.sh").is_file()
    assert (code / "recipes" / "test" / "tiny.yaml").is_file()
    assert not list(code.rglob("__pycache__"))
    info = json.loads((code / "SNAPSHOT.json").read_text())
    assert info["source"] == str(ROOT)


def test_study_skips_finished_rows(tmp_path, capsys):
    (tmp_path / "row_a").mkdir()
    (tmp_path / "row_a" / "summary.json").write_text("{}")
    rc = main_launch(["--study", str(ROOT / "recipes/test/study_tiny"), "--template", TEMPLATE,
                      "--out-root", str(tmp_path), "parallel.backend=ddp", "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "skip row_a: finished" in out
    assert f"FLIP_OUT={tmp_path}/row_b" in out and f"FLIP_OUT={tmp_path}/row_a" not in out
    assert [p.stem for p in study_rows(str(ROOT / "recipes/test/study_tiny"))] == ["row_a", "row_b"]


@pytest.mark.parametrize("argv, message", [
    (["--template", "slurm/nope.sh", "recipes/test/tiny.yaml"], "template slurm/nope.sh not found"),
    (["--template", TEMPLATE], "give a RECIPE or --study"),
    (["--template", TEMPLATE, "--study", "recipes/test/study_tiny"], "--study needs --out-root"),
    (["--template", TEMPLATE, "recipes/test/tiny.yaml", "train.nope=1", "--dry-run"], "train.nope"),
])
def test_bad_arguments_fail_with_one_line(argv, message, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main_launch(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_failure_handling_options_become_the_jobs_environment(tmp_path, capsys):
    rc = main_launch([str(ROOT / "recipes/test/tiny.yaml"), "--template", TEMPLATE, "--out", str(tmp_path / "run"),
                      "--max-restarts", "2", "--keep-failed-nodes", "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0 and "FLIP_MAX_RESTARTS=2 FLIP_EXCLUDE_FAILED_NODES=0 " in out, out
    rc = main_launch([str(ROOT / "recipes/test/tiny.yaml"), "--template", TEMPLATE, "--max-restarts", "-1",
                      "--dry-run"])
    assert rc == 2 and capsys.readouterr().err.strip() == "flip-scale launch: error: --max-restarts must be >= 0, got -1"


def test_study_chains_each_rows_tuning_stage(tmp_path, capsys):
    """--tune-dir: every paper study row gets its unmasked-tuning stage (recipes/studies/tuning,
    same file names) after it, from its weights; a finished row's tuning starts at once."""
    (tmp_path / "l16_laion400m_12.8b").mkdir()
    (tmp_path / "l16_laion400m_12.8b" / "summary.json").write_text("{}")
    rc = main_launch(["--study", str(ROOT / "recipes/studies"), "--tune-dir", str(ROOT / "recipes/studies/tuning"),
                      "--template", TEMPLATE, "--out-root", str(tmp_path), "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0
    rows = [p.stem for p in study_rows(str(ROOT / "recipes/studies"))]
    assert len(rows) == 6
    for row in rows:
        tune = [line for line in out.splitlines() if f"FLIP_OUT={tmp_path}/{row}_tune " in line]
        assert len(tune) == 1, (row, out)
        finished = row == "l16_laion400m_12.8b"
        assert ("--dependency=afterok:<JOBID>" in tune[0]) != finished, tune[0]
        assert f"--job-name=flip-{row}_tune" in tune[0]
    assert "skip l16_laion400m_12.8b: finished" in out
