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
                      "--template", TEMPLATE, "--out-root", str(tmp_path), "--dry-run", "--no-check"])
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


# ------------------------------------------------------------------ site files, inheritance, checks (issue 20)
import os  # noqa: E402
import stat  # noqa: E402

import yaml  # noqa: E402

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "cat", "dog", "photo", "of"]


def _vocab(path, extra=()):
    path.write_text("\n".join([*VOCAB, *extra]) + "\n")
    return path


def _shards(folder, n=2):
    """n (empty) shard files and the manifest `prep download` would write beside them."""
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"{i:05d}.tar").write_bytes(b"")
    (folder / "manifest.json").write_text(json.dumps(
        {"shards": n, "shard_list": [{"shard": f"{i:05d}.tar", "samples": 1} for i in range(n)]}))
    return folder / "manifest.json"


@pytest.fixture
def site(tmp_path):
    """A cluster's paths: LAION-400M and LAION-2B manifests, a tokenizer, the three eval sets."""
    p = tmp_path / "p"
    sets = {name: p / "eval" / f"wds_{name}" for name in ("imagenet1k", "flickr30k", "mscoco_captions")}
    for d in sets.values():
        d.mkdir(parents=True)
    spec = {"data": {"tokenizer": str(_vocab(p / "vocab.txt"))},
            "eval": {"zeroshot": str(sets["imagenet1k"]),
                     "retrieval": [str(sets["flickr30k"]), str(sets["mscoco_captions"])]},
            "datasets": {"laion400m": {"data": {"train_shards": str(_shards(p / "laion400m"))}},
                         "laion2b": {"data": {"train_shards": str(_shards(p / "relaion2b", 3))}}}}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, spec


@pytest.fixture
def fake_sbatch(tmp_path, monkeypatch):
    """An sbatch on PATH that records its environment and answers with the next job id."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sbatch.log"
    script = bin_dir / "sbatch"
    script.write_text(f"""#!/bin/sh
n=$(( $(cat {tmp_path}/next 2>/dev/null || echo 100) + 1 ))
echo $n > {tmp_path}/next
echo "$n FLIP_OUT=$FLIP_OUT FLIP_SITE=$FLIP_SITE $*" >> {log}
echo "$n"
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("FLIP_SITE", raising=False)
    return log


def _config(run_dir):
    return yaml.safe_load((run_dir / "config.yaml").read_text())


def test_study_with_a_site_file_sends_each_row_its_own_data_and_each_tuning_its_rows(tmp_path, site, fake_sbatch,
                                                                                       capsys):
    """Issue 20 acceptance: every row's config.yaml trains on its own dataset's shards; every
    *_tune has its row's data, tokenizer and eval sets; --tune-override reaches every tuning job."""
    import hashlib

    site_path, spec = site
    out = tmp_path / "R"
    rc = main_launch(["--study", str(ROOT / "recipes/studies"), "--tune-dir", str(ROOT / "recipes/studies/tuning"),
                      "--site", str(site_path), "--template", "slurm/study_baseline.sh", "--out-root", str(out),
                      "--tune-override", "checkpoint.keep=7"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    rows = [p.stem for p in study_rows(str(ROOT / "recipes/studies"))]
    assert len(rows) == 6 and len(fake_sbatch.read_text().splitlines()) == 12
    for row in rows:
        cfg, tune = _config(out / row), _config(out / f"{row}_tune")
        dataset = "laion2b" if "laion2b" in row else "laion400m"
        assert cfg["data"]["dataset"] == dataset
        assert cfg["data"]["train_shards"] == spec["datasets"][dataset]["data"]["train_shards"], row
        for key in ("dataset", "train_shards", "tokenizer"):
            assert tune["data"][key] == cfg["data"][key], (row, key)
        assert tune["data"]["tokenizer"] == spec["data"]["tokenizer"]
        assert tune["eval"]["zeroshot"] == cfg["eval"]["zeroshot"] == spec["eval"]["zeroshot"]
        assert tune["eval"]["retrieval"] == cfg["eval"]["retrieval"] == spec["eval"]["retrieval"]
        # Only what the tuning recipe is for differs.
        assert tune["model"]["mask_ratio"] == 0.0 and cfg["model"]["mask_ratio"] == 0.5
        assert tune["train"]["init_from"] == str(out / row) and tune["checkpoint"]["keep"] == 7
        assert cfg["checkpoint"]["keep"] == 3
        for c in (cfg, tune):
            assert c["site"] == {"file": str(site_path.resolve()),
                                 "sha256": hashlib.sha256(site_path.read_bytes()).hexdigest()}
    # The jobs must not apply the site a second time (config.yaml is final).
    assert all("FLIP_SITE= " in line for line in fake_sbatch.read_text().splitlines())


def test_dry_run_with_a_missing_tokenizer_names_it_in_one_line(tmp_path, site, capsys):
    site_path, spec = site
    os.remove(spec["data"]["tokenizer"])
    rc = main_launch(["--study", str(ROOT / "recipes/studies"), "--site", str(site_path), "--template", TEMPLATE,
                      "--out-root", str(tmp_path / "R"), "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert f"data.tokenizer {spec['data']['tokenizer']}: not found" in err and "nothing submitted" in err
    # --no-check: a submit host that cannot see the cluster's filesystem.
    assert main_launch(["--study", str(ROOT / "recipes/studies"), "--site", str(site_path), "--template", TEMPLATE,
                        "--out-root", str(tmp_path / "R"), "--dry-run", "--no-check"]) == 0


def test_checks_count_the_shards_found_against_those_expected(tmp_path, site, capsys):
    site_path, spec = site
    os.remove(tmp_path / "p" / "relaion2b" / "00001.tar")
    rc = main_launch([str(ROOT / "recipes/studies/l16_laion2b_12.8b.yaml"), "--site", str(site_path),
                      "--template", TEMPLATE, "--out", str(tmp_path / "run"), "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 2 and "2 of 3 shards found (first missing: " in err and "00001.tar" in err, err
    # A brace pattern is counted the same way.
    rc = main_launch([str(ROOT / "recipes/test/tiny.yaml"), f"data.train_shards={tmp_path}/p/laion400m/{{00000..00003}}.tar",
                      "--template", TEMPLATE, "--out", str(tmp_path / "run"), "--dry-run"])
    assert rc == 2 and "2 of 4 shards found" in capsys.readouterr().err


def test_a_site_file_with_an_unknown_key_is_one_line_naming_the_file(tmp_path, capsys):
    bad = tmp_path / "site.yaml"
    bad.write_text("data: {tokeniser: /p/vocab.txt}\n")
    rc = main_launch([str(ROOT / "recipes/test/tiny.yaml"), "--site", str(bad), "--template", TEMPLATE, "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and f"site file {bad}" in err and "data.tokeniser" in err, err
    bad.write_text("datasets: {laion400m: {data: {shards: /x}}}\n")
    assert main_launch([str(ROOT / "recipes/test/tiny.yaml"), "--template", TEMPLATE, "--dry-run"],) == 0
    os.environ["FLIP_SITE"] = str(bad)  # the environment variable works as --site does
    try:
        assert main_launch([str(ROOT / "recipes/test/tiny.yaml"), "--template", TEMPLATE, "--dry-run"]) == 2
    finally:
        del os.environ["FLIP_SITE"]
    assert "(datasets.laion400m): unknown key 'data.shards'" in capsys.readouterr().err


def test_tune_inherits_the_runs_site_and_data_overrides_not_its_schedule(tmp_path, site, fake_sbatch):
    """Issue 20 item 2: the issue's case (tok.json and shards given on the command line, tuning
    recipe saying synthetic/builtin) now tunes on the run's data with the run's tokenizer."""
    site_path, spec = site
    shards = spec["datasets"]["laion400m"]["data"]["train_shards"]
    rc = main_launch([str(ROOT / "recipes/test/tiny.yaml"), f"data.train_shards={shards}", "data.dataset=laion400m",
                      "train.samples=6400", "model.mask_ratio=0.75", "--site", str(site_path),
                      "--template", TEMPLATE, "--out", str(tmp_path / "run"),
                      "--tune", str(ROOT / "recipes/test/tiny_unmasked_tuning.yaml"),
                      "--tune-override", "train.samples=640"])
    assert rc == 0
    run, tune = _config(tmp_path / "run"), _config(tmp_path / "run_tune")
    assert tune["data"]["train_shards"] == run["data"]["train_shards"] == shards
    assert tune["data"]["tokenizer"] == run["data"]["tokenizer"] == spec["data"]["tokenizer"]
    assert tune["eval"]["retrieval"] == spec["eval"]["retrieval"]
    assert tune["model"]["mask_ratio"] == 0.0 and tune["train"]["samples"] == 640 and run["train"]["samples"] == 6400


def test_tuning_with_another_vocabulary_than_its_run_is_refused_at_launch(tmp_path, site, capsys):
    site_path, _ = site
    other = _vocab(tmp_path / "other.txt", ["zebra"])
    rc = main_launch([str(ROOT / "recipes/test/tiny.yaml"), "--site", str(site_path), "--template", TEMPLATE,
                      "--out", str(tmp_path / "run"), "--tune", str(ROOT / "recipes/test/tiny_unmasked_tuning.yaml"),
                      f"--tune-override=data.tokenizer={other}", "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "train.init_from" in err and str(other) in err, err
