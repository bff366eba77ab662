"""Issue 20 beyond the launcher: the site file on train/plan/eval, the vocabulary check at train
start, end-of-training retrieval under the names Table 8 reads, the report's data axis, and no
shipped template data-bound by its own plan."""
import json
import re
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, TINY
from flip_scale.config import ConfigError, load_recipe
from flip_scale.data.synthetic import write_synthetic_retrieval, write_synthetic_zeroshot
from flip_scale.report.runs import Run, load_run
from flip_scale.report.tables import our_table_8_values, table_8

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "cat", "dog", "photo", "of"]


def test_train_print_config_applies_the_site_before_the_overrides(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({"data": {"workers": 3}, "train": {"seed": 5},
                                    "datasets": {"synthetic": {"data": {"shuffle_buffer": 77}}}}))
    proc = subprocess.run([sys.executable, "-m", "flip_scale", "train", str(TINY), "--site", str(site),
                           "--print-config", "train.seed=9"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["data"]["workers"] == 3 and cfg["data"]["shuffle_buffer"] == 77  # site, by data.dataset
    assert cfg["train"]["seed"] == 9                                             # the command line wins
    assert cfg["site"]["file"] == str(site.resolve()) and len(cfg["site"]["sha256"]) == 64
    # A resolved config (what a job trains) is final: a site in the environment is not applied again.
    again = tmp_path / "config.yaml"
    again.write_text(proc.stdout)
    other = tmp_path / "other.yaml"
    other.write_text("data: {workers: 1}\n")
    assert load_recipe(again, site=other, check_files=False).data.workers == 3


def test_plan_reads_the_site(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text("datasets: {laion400m: {data: {decode: device}}}\n")
    base = ["plan", "recipes/flip/l16_laion400m.yaml", "--nodes", "32", "--gpus-per-node", "8", "--gpu", "h100", "--json"]
    plans = [json.loads(subprocess.run([sys.executable, "-m", "flip_scale", *base, *extra], cwd=ROOT, check=True,
                                       capture_output=True, text=True, timeout=120).stdout)
             for extra in ([], ["--site", str(site)])]
    assert plans[0]["loader"]["decode"] == "cpu" and plans[1]["loader"]["decode"] == "device"


@pytest.mark.slow
def test_vocabulary_recorded_and_init_from_with_another_is_refused_at_train_start(tmp_path):
    from flip_scale.train.trainer import run_training

    pre = tmp_path / "pre"
    run_training(load_recipe(TINY, [f"train.out_dir={pre}", "train.samples=128", "checkpoint.every_steps=0"]))
    recorded = yaml.safe_load((pre / "config.yaml").read_text())["data"]["vocab_sha256"]
    assert recorded and len(recorded) == 64
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    cfg = load_recipe(TINY, [f"train.out_dir={tmp_path / 'tune'}", f"train.init_from={pre}",
                             f"data.tokenizer={vocab}", "train.samples=128"])
    with pytest.raises(ConfigError, match=r"train.init_from: .* was trained with tokenizer builtin"):
        run_training(cfg)


@pytest.mark.slow
def test_the_end_of_training_evaluates_every_set_under_the_names_table_8_reads(tmp_path):
    """CLIP_benchmark's folder names (wds_*) give eval/imagenet1k.json, flickr30k.json and
    mscoco_captions.json, which the report's Table 8 reads without a hand step."""
    from flip_scale.train.trainer import run_training

    sets = tmp_path / "clip_benchmark"
    write_synthetic_zeroshot(str(sets / "wds_imagenet1k"), 64, image_size=32)
    for name in ("wds_flickr30k", "wds_mscoco_captions"):
        write_synthetic_retrieval(str(sets / name), 32, image_size=32)
    run = tmp_path / "run"
    run_training(load_recipe(TINY, [f"train.out_dir={run}", "train.samples=256", "checkpoint.every_steps=0",
                                    f"eval.zeroshot={sets}/wds_imagenet1k",
                                    f"eval.retrieval=[{sets}/wds_flickr30k,{sets}/wds_mscoco_captions]"]))
    assert sorted(p.name for p in (run / "eval").iterdir()) == ["flickr30k.json", "imagenet1k.json",
                                                                 "mscoco_captions.json"]
    values = our_table_8_values(load_run(run))
    assert all(v is not None for v in values.values()), values


def test_the_reports_data_axis_reads_data_dataset(tmp_path):
    """A LAION-2B row whose site keeps its shards under /p/relaion2b is still Table 8's LAION-2B."""
    def run(recipe, name, overrides=()):
        cfg = load_recipe(ROOT / recipe, list(overrides), check_files=False)
        (tmp_path / name).mkdir()
        # eval names as an earlier version wrote them (CLIP_benchmark's folder name) are read too
        return Run(name, tmp_path / name, cfg, [], {"steps": 1}, {"imagenet1k": {"acc1": 0.75}})

    shards = ["data.train_shards=/p/relaion2b/manifest.json"]
    pre = run("recipes/studies/l16_laion2b_12.8b.yaml", "pre", shards)
    tune = run("recipes/studies/tuning/l16_laion2b_12.8b.yaml", "tune", [*shards, f"train.init_from={pre.path}"])
    assert pre.data == tune.data == "LAION-2B"
    headers, rows = table_8([pre, tune])
    assert {r[0]: r for r in rows}["data scaling"][headers.index("run")] == "tune"
    # A Re-LAION row keeps its own name on the data axis and fills the LAION-2B case, saying so.
    re_pre = run("recipes/studies/l16_laion2b_12.8b.yaml", "re_pre", [*shards, "data.dataset=relaion2b"])
    re_tune = run("recipes/studies/tuning/l16_laion2b_12.8b.yaml", "re_tune",
                  [*shards, "data.dataset=relaion2b", f"train.init_from={re_pre.path}"])
    assert re_pre.data == "relaion2b"
    headers, rows = table_8([re_pre, re_tune])
    row = {r[0]: r for r in rows}["data scaling"]
    assert row[headers.index("run")] == "re_tune" and row[headers.index("data")] == "LAION-2B (ours: relaion2b)"
    old = Run("old", tmp_path, load_recipe(TINY, ["data.dataset=null", "data.train_shards=/x/laion400m/a.tar"],
                                           check_files=False), [], None)
    assert old.data == "LAION-400M"  # runs from before data.dataset: by their paths


def test_wds_result_names_written_before_are_read_as_table_8_names(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "config.yaml").write_text((ROOT / "recipes/test/tiny.yaml").read_text())
    (tmp_path / "eval" / "wds_flickr30k.json").write_text(json.dumps(
        {"dataset": "wds_flickr30k", "text_retrieval_recall@1": 0.5, "image_retrieval_recall@1": 0.4}))
    values = our_table_8_values(load_run(tmp_path))
    assert values["flickr_i2t"] is not None and values["flickr_t2i"] is not None


# ------------------------------------------------------------------ no template data-bound by its own plan
def _pairs():
    """(recipe, template) for every template's default recipe and every recipe whose Command names one."""
    out = set()
    for tpl in sorted((ROOT / "slurm").glob("*.sh")):
        m = re.search(r'FLIP_RECIPE:=([^}"]+)', tpl.read_text())
        if m and (ROOT / m.group(1)).is_file():
            out.add((m.group(1), f"slurm/{tpl.name}"))
    for path in sorted((ROOT / "recipes").rglob("*.yaml")):
        text = path.read_text()
        m = re.search(r"^# Command:\s+(.*)$", text, re.M)
        if m and re.search(r"^# Hardware: \d+ nodes x 8 H100", text, re.M):  # a GPU run, not a test recipe
            for tpl in re.findall(r"(slurm/[\w-]+\.sh)", m.group(1)):
                out.add((str(path.relative_to(ROOT)), tpl))
    return sorted(out)


PAIRS = _pairs()


def test_the_pairs_cover_the_paper_runs():
    recipes = {r for r, _ in PAIRS}
    assert {"recipes/flip/l16_laion400m.yaml", "recipes/flip/b16_laion400m.yaml",
            "recipes/studies/l16_laion2b_12.8b.yaml", "recipes/ablations/a_mask75_batch64k.yaml"} <= recipes
    assert len(PAIRS) >= 30


@pytest.mark.parametrize("recipe, template", PAIRS, ids=[f"{r}@{t}" for r, t in PAIRS])
def test_no_shipped_template_is_data_bound_by_its_own_plan(recipe, template):
    """`flip-scale plan RECIPE` on the template's nodes with the CPUs it requests per GPU task."""
    from flip_scale.plan import format_plan, load_plan_config, make_plan

    text = (ROOT / template).read_text()
    opt = lambda name: int(re.search(rf"^#SBATCH --{name}=(\d+)", text, re.M).group(1))  # noqa: E731
    header = re.search(r"^# Hardware: (\d+) nodes", (ROOT / recipe).read_text(), re.M)
    nodes = int(header.group(1)) if header else opt("nodes")
    gpus = opt("gpus-per-node")
    cpus_per_gpu = opt("cpus-per-task") * opt("ntasks-per-node") // gpus
    plan = make_plan(load_plan_config(recipe, [], nodes * gpus), nodes, gpus, "h100", cpus_per_gpu=cpus_per_gpu)
    assert "NOT enough" not in format_plan(plan) and plan["loader"]["fix"] is None, plan["loader"]


def test_a_data_bound_plan_prints_the_fix():
    proc = subprocess.run([sys.executable, "-m", "flip_scale", "plan", "recipes/flip/b16_laion400m.yaml",
                           "data.decode=cpu", "--nodes", "16", "--gpus-per-node", "8", "--gpu", "h100"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    fix = [line for line in proc.stdout.splitlines() if line.strip().startswith("fix:")]
    # The CPUs it asks for are the cores the loader line says it needs.
    needed = re.search(r"^data loader: .* needs (\d+) CPU cores per GPU", proc.stdout, re.M).group(1)
    assert len(fix) == 1 and "data.decode=device" in fix[0] and f"--cpus-per-task={needed};" in fix[0], proc.stdout


# ------------------------------------------------------------------ eval sets of the site, by name; doc samples
def test_eval_names_a_set_of_the_site_file(tmp_path):
    from flip_scale.config import load_site
    from flip_scale.eval.cli import site_eval_set

    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({"eval": {"zeroshot": "/p/eval/imagenet1k",
                                             "retrieval": ["/p/eval/wds_flickr30k", "/p/eval/wds_mscoco_captions"]}}))
    s = load_site(site)
    assert site_eval_set(s, "flickr30k") == "/p/eval/wds_flickr30k"
    assert site_eval_set(s, "wds_mscoco_captions") == "/p/eval/wds_mscoco_captions"
    assert site_eval_set(s, "imagenet1k") == "/p/eval/imagenet1k" and site_eval_set(s, "coco") is None
    proc = subprocess.run([sys.executable, "-m", "flip_scale", "eval", str(tmp_path), "--retrieval", "coco",
                           "--site", str(site)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"flip-scale eval: error: 'coco' is neither a dataset directory nor an eval set of site file {site}")


def test_every_run_recipe_names_its_dataset():
    """data.dataset in every recipe (the site file picks paths by it; the report labels by it)."""
    for path in sorted((ROOT / "recipes").rglob("*.yaml")):
        if "models" in path.parts:
            continue  # model blocks, not runs
        cfg = load_recipe(path, check_files=False)
        expected = ("synthetic" if cfg.data.train_shards == "synthetic" else
                    "laion2b" if "laion2b" in cfg.data.train_shards else "laion400m")
        assert cfg.data.dataset == expected, path
