"""Report Table 8 compares like with like: the paper's numbers are after unmasked tuning (its
baseline row is Table 2/3's tuned L/16), so our number beside a case is the tuning run's, found
through its init_from, never the 50%-mask pre-training's."""
from pathlib import Path

from flip_scale.config import load_recipe
from flip_scale.report.runs import Run
from flip_scale.report.tables import table_8

from conftest import ROOT


def _run(tmp_path: Path, recipe: str, name: str, acc1: float, overrides=()) -> Run:
    cfg = load_recipe(ROOT / recipe, list(overrides), check_files=False)
    path = tmp_path / name
    path.mkdir()
    return Run(name, path, cfg, [], {"steps": 1}, {"imagenet1k": {"acc1": acc1}})


def test_a_case_is_matched_by_the_tuning_of_its_pretraining(tmp_path):
    pre = _run(tmp_path, "recipes/studies/l16_laion400m_12.8b.yaml", "l16_pre", 0.731)
    tune = _run(tmp_path, "recipes/studies/tuning/l16_laion400m_12.8b.yaml", "l16_tune", 0.742,
                [f"train.init_from={pre.path}"])
    # A tuning of some other pre-training (L/16 on LAION-2B) must not fill the baseline row.
    other_pre = _run(tmp_path, "recipes/studies/l16_laion2b_12.8b.yaml", "l16_2b_pre", 0.70)
    headers, rows = table_8([pre, tune, other_pre])
    by_case = {r[0]: r for r in rows}
    baseline = by_case["baseline"]
    assert baseline[headers.index("run")] == "l16_tune"
    assert baseline[headers.index("IN-1k paper / ours")] == "74.3 / 74.2"
    # The pre-trainings alone follow as our own rows, beside no paper number.
    assert by_case["(ours) l16_pre"][headers.index("IN-1k paper / ours")] == "- / 73.1"
    assert by_case["data scaling"][headers.index("run")] == "-"  # its tuning is not there


def test_a_pretraining_alone_fills_no_case(tmp_path):
    pre = _run(tmp_path, "recipes/studies/h14_laion2b_25.6b.yaml", "h14_joint", 0.77)
    headers, rows = table_8([pre])
    assert all(r[headers.index("run")] == "-" for r in rows[:6])
    assert rows[6][0] == "(ours) h14_joint"


def test_a_run_of_the_papers_nominal_length_matches_too(tmp_path):
    """The recipes train the authors' step count (12,451,840,000 samples: facebookresearch/flip
    train.py:313 and configs/default.py:26,74); a run made with the paper's round 12.8B (older
    recipes, or a user's override) is the same case."""
    pre = _run(tmp_path, "recipes/studies/l16_laion400m_12.8b.yaml", "l16_pre", 0.731,
               ["train.samples=12800000000"])
    tune = _run(tmp_path, "recipes/studies/tuning/l16_laion400m_12.8b.yaml", "l16_tune", 0.742,
                [f"train.init_from={pre.path}"])
    assert pre.samples == 12_800_000_000
    headers, rows = table_8([pre, tune])
    assert {r[0]: r for r in rows}["baseline"][headers.index("run")] == "l16_tune"
    odd = _run(tmp_path, "recipes/studies/l16_laion400m_12.8b.yaml", "l16_odd", 0.7, ["train.samples=12000000000"])
    tune2 = _run(tmp_path, "recipes/studies/tuning/l16_laion400m_12.8b.yaml", "t2", 0.7, [f"train.init_from={odd.path}"])
    headers, rows = table_8([odd, tune2])
    assert {r[0]: r for r in rows}["baseline"][headers.index("run")] == "-"  # another schedule
