"""Nothing from a run directory or checkpoint runs code (issue 21, item 1), and eval/export load
the newest checkpoint that works and never publish a result made of nothing (item 4).

Each payload is a real pickle whose __reduce__ would create a marker file; every test runs the
real command in a subprocess and checks the marker is absent, the exit is non-zero and stderr
holds one error line and no traceback."""
import ast
import io
import json
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from flip_scale.checkpoint import checkpoint_readers, load_rank_state
from flip_scale.data.shards import expand_shards
from flip_scale.data.synthetic import write_synthetic_zeroshot
from flip_scale.safe_load import UnsafeCheckpoint, load_dcp_metadata, load_state, save_state

from conftest import ROOT, TINY, cli
from payloads import Payload, claim_backend, dcp_metadata, deepspeed, train_state

pytestmark = pytest.mark.slow


def _train(out: Path, *overrides, check=True):
    return subprocess.run(cli("train", TINY, "train.samples=128", "checkpoint.every_steps=1",
                              f"train.out_dir={out}", *overrides),
                          cwd=ROOT, capture_output=True, text=True, timeout=600, check=check)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("safe")
    out = {"ddp": root / "ddp", "fsdp": root / "fsdp", "zs": root / "zs"}
    _train(out["ddp"])  # checkpoints step_00000001, step_00000002
    _train(out["fsdp"], "parallel.backend=fsdp")
    write_synthetic_zeroshot(str(out["zs"]), 48, image_size=32)
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _newest(run: Path) -> Path:
    return run / "checkpoints" / "step_00000002"


def _assert_refused(p: subprocess.CompletedProcess, marker: Path, *words):
    assert not marker.exists(), "the payload ran"
    assert p.returncode != 0, p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    errors = [line for line in p.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, p.stderr
    for word in words:
        assert word in errors[0], errors[0]


# -- the four code-execution cases ----------------------------------------------------------
def test_dcp_metadata_payload_on_a_ddp_run_claiming_fsdp_is_not_run(runs, tmp_path):
    run = _copy(runs["ddp"], tmp_path / "run")
    marker = tmp_path / "MARKER"
    dcp_metadata(_newest(run), marker, claim="fsdp")
    for args in (("eval", run, "--zeroshot", runs["zs"], "--device", "cpu", "--no-progress"),
                 ("export", run, "--output", tmp_path / "oc")):
        p = subprocess.run(cli(*args), cwd=ROOT, capture_output=True, text=True, timeout=300)
        _assert_refused(p, marker, "refusing to load")
    assert not (run / "eval").exists() and not (tmp_path / "oc").exists()


def test_dcp_metadata_payload_in_an_fsdp_checkpoint_is_refused_by_the_restricted_unpickler(runs, tmp_path):
    run = _copy(runs["fsdp"], tmp_path / "run")
    marker = tmp_path / "MARKER"
    dcp_metadata(_newest(run), marker)
    p = subprocess.run(cli("export", run, "--output", tmp_path / "oc"), cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    _assert_refused(p, marker, "posix.system")
    # Resuming the run: refused on the spot, nothing set aside as unreadable_* and passed over.
    p = _train(run, "parallel.backend=fsdp", "train.samples=192", check=False)
    _assert_refused(p, marker, "posix.system")
    assert sorted(c.name for c in (run / "checkpoints").iterdir()) == ["latest", "step_00000001", "step_00000002"]


def test_train_state_payload_on_resume_of_a_copied_run_is_not_run(runs, tmp_path):
    run = _copy(runs["ddp"], tmp_path / "run")
    marker = tmp_path / "MARKER"
    train_state(_newest(run), marker)
    p = _train(run, "train.samples=192", check=False)
    _assert_refused(p, marker, "train_state_rank0.pt", "posix.system")
    assert not list((run / "checkpoints").glob("unreadable_*"))


def test_deepspeed_checkpoint_payload_via_export_needs_trust(runs, tmp_path):
    run = _copy(runs["ddp"], tmp_path / "run")
    marker = tmp_path / "MARKER"
    deepspeed(_newest(run), marker)
    p = subprocess.run(cli("export", run, "--output", tmp_path / "oc"), cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    _assert_refused(p, marker, "--trust-checkpoint", "posix.system")
    # The flag is what stands between the file and DeepSpeed's own unpickler: with it, it runs.
    p = subprocess.run(cli("export", run, "--output", tmp_path / "oc", "--trust-checkpoint"), cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert marker.exists()


def test_pipe_file_name_found_by_a_glob_is_a_path_not_a_command(tmp_path, monkeypatch):
    marker_name = "MARKER"
    evil = tmp_path / f"pipe:touch {marker_name};cat 00000.tar;.tar"
    evil.write_bytes(b"not a tar")
    p = subprocess.run(cli("prep", "tokenizer", "--shards", "*.tar", "--vocab-size", "64", "--output", "tok.json"),
                       cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                       text=True, timeout=300)
    _assert_refused(p, tmp_path / marker_name)
    monkeypatch.chdir(tmp_path)
    assert expand_shards("*.tar") == [f"./{evil.name}"]
    assert expand_shards(".") == [f"./{evil.name}"]
    assert expand_shards(str(tmp_path)) == [str(evil)]
    # Written in the spec itself, pipe: is still a command (the user asked for it).
    assert expand_shards("pipe:cat a.tar") == ["pipe:cat a.tar"]
    assert not (tmp_path / marker_name).exists()


# -- the loaders themselves -----------------------------------------------------------------
def test_loader_is_chosen_from_the_files_not_from_meta(runs, tmp_path):
    ddp = _copy(runs["ddp"], tmp_path / "ddp")
    assert checkpoint_readers(_newest(ddp)) == ("single", "ddp")
    assert checkpoint_readers(_newest(runs["fsdp"])) == ("fsdp",)
    claim_backend(_newest(ddp), "fsdp")
    with pytest.raises(UnsafeCheckpoint, match="meta.json says backend 'fsdp'"):
        checkpoint_readers(_newest(ddp))
    claim_backend(_newest(ddp), "ddp")
    shutil.copy(_newest(runs["fsdp"]) / ".metadata", _newest(ddp) / ".metadata")
    with pytest.raises(UnsafeCheckpoint, match="several checkpoint formats"):
        checkpoint_readers(_newest(ddp))


def test_real_dcp_metadata_loads_and_anything_else_is_refused(runs, tmp_path):
    with open(_newest(runs["fsdp"]) / ".metadata", "rb") as f:
        metadata = load_dcp_metadata(f, "real")
    assert any(k.startswith("model.") for k in metadata.state_dict_metadata)
    for obj in (Payload(tmp_path / "MARKER"), {"x": print}):
        with pytest.raises(UnsafeCheckpoint, match="refusing to load"):
            load_dcp_metadata(io.BytesIO(pickle.dumps(obj)), "evil")
    # A storage file outside the folder is refused as well (DCP would read any path it names).
    metadata.storage_data = {k: type(v)(relative_path="../x", offset=0, length=1)
                             for k, v in list(metadata.storage_data.items())[:1]}
    with pytest.raises(UnsafeCheckpoint, match="outside"):
        load_dcp_metadata(io.BytesIO(pickle.dumps(metadata)), "moved")
    assert not (tmp_path / "MARKER").exists()


def test_train_state_is_json_plus_tensors_and_the_old_pickled_format_still_loads(tmp_path):
    import random

    import numpy as np

    state = {"loader": {"kind": "shards", "positions": {"0": [3, 7]}, "counters": {"bad_image": 2}},
             "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}}
    save_state(state, tmp_path / "new.pt")
    # Its pickle holds nothing torch's weights_only loader does not allow by default.
    assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "new.pt") == []
    torch.save(state, tmp_path / "old.pt")  # how earlier versions wrote it (numpy arrays pickled)
    for back in (load_state(tmp_path / "new.pt"), load_state(tmp_path / "old.pt")):
        assert back["loader"] == state["loader"]
        assert torch.equal(back["rng"]["torch"], state["rng"]["torch"])
        assert back["rng"]["python"] == state["rng"]["python"]
        np.random.set_state(back["rng"]["numpy"])  # a valid numpy state, not just equal-looking
        assert (back["rng"]["numpy"][1] == state["rng"]["numpy"][1]).all()
    shutil.copy(tmp_path / "old.pt", tmp_path / "train_state_rank0.pt")
    assert load_rank_state(tmp_path, 0)["loader"] == state["loader"]


# -- eval / export fall back; eval of nothing writes nothing ----------------------------------
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_eval_and_export_fall_back_past_a_truncated_newest_checkpoint(runs, tmp_path):
    run = _copy(runs["ddp"], tmp_path / "run")
    _truncate(_newest(run) / "model_optim.pt")
    p = subprocess.run(cli("eval", run, "--zeroshot", runs["zs"], "--device", "cpu", "--no-progress"),
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.splitlines()[-1])["checkpoint"].endswith("step_00000001")
    skipped = [line for line in p.stderr.splitlines() if "step_00000002" in line]
    assert len(skipped) == 1 and "skipping" in skipped[0], p.stderr
    p = subprocess.run(cli("export", run, "--output", tmp_path / "oc"), cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.splitlines()[-1])["checkpoint"].endswith("step_00000001")
    assert (tmp_path / "oc" / "open_clip_model.safetensors").is_file()
    # Nothing in the run was renamed: evaluation never changes a run directory.
    assert (_newest(run) / "meta.json").is_file()


def test_eval_of_all_corrupt_or_missing_shards_is_an_error_and_writes_nothing(runs, tmp_path):
    run = _copy(runs["ddp"], tmp_path / "run")
    zs = Path(shutil.copytree(runs["zs"], tmp_path / "zs"))
    good = run / "eval" / "zs.json"
    good.parent.mkdir()
    good.write_text('{"dataset": "zs", "acc1": 0.5, "n": 48}\n')
    for shard in (zs / "test").glob("*.tar"):
        shard.write_bytes(b"garbage")
    p = subprocess.run(cli("eval", run, "--zeroshot", zs, "--device", "cpu", "--no-progress", "--json",
                           tmp_path / "out.json"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    _assert_refused(p, tmp_path / "none", "no sample")
    assert good.read_text() == '{"dataset": "zs", "acc1": 0.5, "n": 48}\n'
    assert not (tmp_path / "out.json").exists()
    (zs / "test" / "0.tar").unlink()
    p = subprocess.run(cli("eval", run, "--zeroshot", zs, "--device", "cpu", "--no-progress"), cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    _assert_refused(p, tmp_path / "none", "missing", "0.tar")
    assert good.read_text() == '{"dataset": "zs", "acc1": 0.5, "n": 48}\n'


# -- the house (item 5) -------------------------------------------------------------------------
def _package_imports(path: Path) -> set[str]:
    """Modules of flip_scale a file imports (relative imports resolved), at any depth."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                out.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module and node.module.startswith("flip_scale"):
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("flip_scale"))
    return out


def test_run_dir_imports_nothing_of_the_package_and_models_nothing_from_data():
    assert _package_imports(ROOT / "flip_scale" / "run_dir.py") == set()
    for path in (ROOT / "flip_scale" / "models").glob("*.py"):
        assert not [m for m in _package_imports(path) if m.startswith("flip_scale.data")], path


def test_a_legitimate_deepspeed_checkpoint_resumes_and_exports_under_the_allow_list(tmp_path):
    """DeepSpeed's own loaders (engine resume, zero_to_fp32) run with torch.load forced to
    weights_only: what our backend writes must pass the allow-list, without --trust-checkpoint."""
    run = tmp_path / "ds"
    _train(run, "parallel.backend=deepspeed")
    p = _train(run, "parallel.backend=deepspeed", "train.samples=192")
    assert "resumed from" in p.stdout + p.stderr
    assert (run / "checkpoints" / "step_00000003" / "meta.json").is_file()
    p = subprocess.run(cli("export", run, "--output", tmp_path / "oc"), cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.splitlines()[-1])["checkpoint"].endswith("step_00000003")


def test_model_file_payload_is_refused_not_skipped_as_damaged(runs, tmp_path):
    """A payload in model_optim.pt stops eval with one line; it is not passed over for an older
    checkpoint as a truncated file would be."""
    run = _copy(runs["ddp"], tmp_path / "run")
    marker = tmp_path / "MARKER"
    torch.save({"model": Payload(marker)}, _newest(run) / "model_optim.pt")
    p = subprocess.run(cli("eval", run, "--zeroshot", runs["zs"], "--device", "cpu", "--no-progress"),
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    _assert_refused(p, marker, "model_optim.pt", "posix.system")
    assert not (run / "eval").exists()
