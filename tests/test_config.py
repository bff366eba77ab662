import dataclasses
import subprocess
import textwrap

import pytest
import yaml

from flip_scale.config import Config, ConfigError, load_recipe
from flip_scale.config.schema import DataConfig

from conftest import ROOT, TINY, cli


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_tiny_recipe_loads_with_its_values():
    cfg = load_recipe(TINY)
    assert cfg.model.name == "tiny" and cfg.data.train_shards == "synthetic"
    assert cfg.peak_lr == pytest.approx(cfg.train.base_lr * cfg.train.global_batch_size / 256)
    assert cfg.total_steps == cfg.train.samples // cfg.train.global_batch_size


def test_every_field_has_a_one_line_doc():
    def walk(cls):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("doc"), f"{cls.__name__}.{f.name} has no doc"
            assert "\n" not in f.metadata["doc"]
            if dataclasses.is_dataclass(f.type if not isinstance(f.type, str) else None):
                walk(f.type)
    walk(Config)
    for section in ("model", "data", "train", "checkpoint", "parallel", "eval"):
        walk(type(getattr(Config(), section)))


def test_interface_keys_exist():
    cfg = Config()
    for key in ["model.name", "model.mask_ratio", "model.text_length", "model.image_pool", "data.train_shards",
                "data.tokenizer", "data.image_size", "data.workers", "train.global_batch_size", "train.samples",
                "train.base_lr", "train.warmup_samples", "train.weight_decay", "train.seed", "train.out_dir",
                "train.init_from", "train.log_every_steps", "checkpoint.every_steps", "checkpoint.keep",
                "parallel.backend", "parallel.zero_stage", "parallel.activation_checkpointing", "parallel.compile",
                "parallel.precision", "eval.zeroshot", "eval.every_steps"]:
        section, name = key.split(".")
        assert hasattr(getattr(cfg, section), name), key


def test_base_inheritance_and_overrides(tmp_path):
    base = write(tmp_path, "base.yaml", """
        model: {name: tiny, mask_ratio: 0.75}
        data: {image_size: 32}
        train: {global_batch_size: 8, samples: 80, warmup_samples: 8, out_dir: x}
    """)
    child = write(tmp_path, "child.yaml", """
        base: base.yaml
        model: {mask_ratio: 0.5}
    """)
    cfg = load_recipe(child, ["train.global_batch_size=16", "parallel.precision=bf16"])
    assert cfg.model.mask_ratio == 0.5          # child wins over base
    assert cfg.data.image_size == 32            # inherited
    assert cfg.train.global_batch_size == 16    # override wins over both
    assert cfg.parallel.precision == "bf16"
    assert base.exists()


@pytest.mark.parametrize("overrides, key", [
    (["model.mask_ratio=1.0"], "model.mask_ratio"),
    (["model.mask_ratio=-0.1"], "model.mask_ratio"),
    (["parallel.zero_stage=2"], "parallel.zero_stage"),
    (["train.init_from=/does/not/exist"], "train.init_from"),
    (["model.bogus=1"], "model.bogus"),
    (["train.samples=abc"], "train.samples"),
    (["parallel.activation_checkpointing=3"], "parallel.activation_checkpointing"),
    (["data.image_size=30"], "data.image_size"),
    (["parallel.backend=horovod"], "parallel.backend"),
    (["eval.templates=81"], "eval.templates"),
])
def test_bad_overrides_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as e:
        load_recipe(TINY, overrides)
    msg = str(e.value)
    assert key in msg and "\n" not in msg
    assert "command line" in msg


def test_unknown_key_in_file_names_the_file(tmp_path):
    bad = write(tmp_path, "bad.yaml", f"""
        base: {TINY}
        train: {{global_bach_size: 64}}
    """)
    with pytest.raises(ConfigError) as e:
        load_recipe(bad)
    assert "train.global_bach_size" in str(e.value) and "bad.yaml" in str(e.value)


def test_batch_must_divide_world_size():
    load_recipe(TINY, ["parallel.backend=ddp"], world_size=4)
    with pytest.raises(ConfigError, match="train.global_batch_size.*world size 3"):
        load_recipe(TINY, ["parallel.backend=ddp"], world_size=3)


def test_deepspeed_accepts_zero_stage():
    cfg = load_recipe(TINY, ["parallel.backend=deepspeed", "parallel.zero_stage=3"])
    assert cfg.parallel.zero_stage == 3


def test_cli_print_config_round_trips(tmp_path):
    out = subprocess.run(cli("train", TINY, "model.mask_ratio=0.75", "--print-config"), capture_output=True,
                         text=True, check=True, cwd=ROOT).stdout
    data = yaml.safe_load(out)
    assert data["model"]["mask_ratio"] == 0.75 and data["model"]["name"] == "tiny"
    assert set(data) == {"model", "data", "train", "checkpoint", "parallel", "eval"}
    # overrides after the flag work too; a stray flag is still an error
    late = subprocess.run(cli("train", TINY, "--print-config", "model.mask_ratio=0.75", "train.seed=3"),
                          capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert yaml.safe_load(late)["model"]["mask_ratio"] == 0.75 and yaml.safe_load(late)["train"]["seed"] == 3
    bad = subprocess.run(cli("train", TINY, "--print-config", "--bogus"), capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "unrecognized arguments: --bogus" in bad.stderr


def test_cli_bad_recipe_is_one_line_before_any_model(tmp_path):
    r = subprocess.run(cli("train", TINY, "parallel.zero_stage=1", f"train.out_dir={tmp_path}/run"),
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "parallel.zero_stage" in lines[0] and "deepspeed" in lines[0]
    assert not (tmp_path / "run").exists()  # failed before writing anything


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_data_config_defaults_are_paper_like():
    assert DataConfig().image_size == 224


def test_packaged_demo_recipe_is_the_tiny_recipe():
    """`flip-scale demo` falls back to the packaged copy when installed without recipes/."""
    packaged = ROOT / "flip_scale" / "assets" / "tiny.yaml"
    assert packaged.read_text() == TINY.read_text()


def test_checkpoint_async_is_the_recipe_key_of_a_python_field(tmp_path):
    """INTERFACE.md names it `checkpoint.async` (a Python keyword): recipes, overrides and the
    dumped config.yaml use that key; the field behind it is async_save."""
    from flip_scale.config import dump_config, write_config

    cfg = load_recipe(TINY, ["checkpoint.async=false"])
    assert cfg.checkpoint.async_save is False and "  async: false\n" in dump_config(cfg)
    write_config(cfg, tmp_path)
    assert load_recipe(tmp_path / "config.yaml").checkpoint.async_save is False  # config.yaml loads back
    with pytest.raises(ConfigError, match="unknown key 'checkpoint.async_save'.*async"):
        load_recipe(TINY, ["checkpoint.async_save=false"])
