"""Report panels say what they show: a panel titled for an axis holds runs that differ in that
axis alone; runs differing in several axes share one panel that names them; legends name only
what differs. Runs here are real Config objects from the tiny recipe (no training needed)."""
from pathlib import Path

from flip_scale.config import load_recipe
from flip_scale.report.grouping import label, panels, varying_axes
from flip_scale.report.runs import Run

from conftest import TINY

LAION400M = "/data/laion400m/{00000..00010}.tar"
LAION2B = "/data/laion2b/{00000..00010}.tar"


def run(name, model="tiny", data="synthetic", samples=640, mask=0.5, batch=64):
    cfg = load_recipe(TINY, [f"model.name={model}", f"data.train_shards={data}", f"train.samples={samples}",
                             f"model.mask_ratio={mask}", f"train.global_batch_size={batch}"])
    return Run(name, Path(name), cfg, [], None)


def titles(runs):
    return [p.title for p in panels(runs)]


def test_two_runs_differing_in_three_axes_get_one_panel_that_says_so():
    # The case: once drawn identically under "data scaling", "schedule scaling" and "batch size".
    a = run("a", data=LAION400M, samples=640, batch=64)
    b = run("b", data=LAION2B, samples=1280, batch=32)
    groups = panels([a, b])
    assert len(groups) == 1
    (p,) = groups
    assert p.axis is None and p.title == "runs differing in several axes (data, schedule, batch)"
    assert p.runs == [a, b] and p.label_axes == ["data", "samples", "batch"]
    assert label(a, p.label_axes) == "data LAION-400M, schedule 640, batch 64"


def test_axis_panels_hold_only_controlled_comparisons():
    base = run("base", data=LAION400M)
    bigger = run("bigger", model="vit_b16", data=LAION400M)    # model only
    more_data = run("more_data", data=LAION2B)                  # data only
    longer = run("longer", data=LAION400M, samples=1280)        # schedule only
    odd = run("odd", model="vit_b16", data=LAION2B, batch=32)   # model + data + batch vs everyone
    runs = [base, bigger, more_data, longer, odd]
    assert varying_axes(runs) == ["model", "data", "samples", "batch"]
    groups = panels(runs)
    assert titles(runs) == ["model scaling", "data scaling", "schedule scaling",
                            "odd: differs from the nearest run (bigger) in data, batch"]
    by_title = {p.title: p for p in groups}
    assert by_title["model scaling"].runs == [base, bigger] and by_title["model scaling"].label_axes == ["model"]
    assert by_title["data scaling"].runs == [base, more_data]
    assert by_title["schedule scaling"].runs == [base, longer]
    assert [r.name for r in groups[-1].runs] == ["odd"]
    # No axis panel holds runs that differ in anything but its axis.
    for p in groups[:-1]:
        assert varying_axes(p.runs) == [p.axis]


def test_one_axis_compared_at_two_settings_gives_two_panels_naming_the_fixed_value():
    runs = [run(f"m{m}_b{b}", mask=m, batch=b) for b in (64, 32) for m in (0.0, 0.75)]
    groups = panels(runs)
    assert titles(runs) == ["mask ratio at batch 64", "mask ratio at batch 32",
                            "batch size at mask 0%", "batch size at mask 75%"]
    for p in groups:
        assert varying_axes(p.runs) == [p.axis] and p.label_axes == [p.axis]


def test_mask_study_is_one_panel_and_identical_runs_share_all_runs():
    runs = [run(f"mask{m}", mask=m) for m in (0.0, 0.5, 0.75)]
    (p,) = panels(runs)
    assert p.title == "mask ratio" and [label(r, p.label_axes) for r in runs] == ["mask 0%", "mask 50%", "mask 75%"]
    same = [run("x"), run("y")]
    (p,) = panels(same)
    assert p.title == "all runs" and p.label_axes == [] and label(same[0], p.label_axes) == "x"
