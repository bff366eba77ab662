"""The report page in a real browser: headless Chromium loads index.html, every figure loads and
shows plotted curves, and the runs table is there. (`make test` installs Debian's `chromium`.)"""
import shutil

import pytest

from flip_scale.config import load_recipe
from flip_scale.data.synthetic import write_synthetic_zeroshot
from flip_scale.report.cli import make_report
from flip_scale.train.trainer import run_training

from browser import assert_report_renders, chromium, page_state
from conftest import TINY


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    chromium()  # skip (with the reason) before spending time on training when there is no browser
    root = tmp_path_factory.mktemp("browser_runs")
    zs = write_synthetic_zeroshot(str(root / "zs"), 48, image_size=32)
    dirs = []
    for mask in (0.0, 0.75):  # 6 steps each, evaluated in training at steps 3 and 6
        out = root / f"mask{int(mask * 100)}"
        run_training(load_recipe(TINY, [f"train.out_dir={out}", f"model.mask_ratio={mask}", "train.samples=384",
                                        "train.log_every_steps=3", "checkpoint.every_steps=0",
                                        f"eval.zeroshot={zs}", "eval.every_steps=3"]))
        dirs.append(out)
    return make_report(dirs, str(root / "report"))


def test_every_figure_loads_and_the_runs_table_is_there(report, tmp_path):
    state = assert_report_renders(report["index_html"], tmp_path, min_images=len(report["figures"]))
    assert sorted(i["src"] for i in state["images"]) == sorted(f.name for f in report["figures"])
    assert {"zeroshot_vs_wall.png", "loss_vs_samples.png"} <= {i["src"] for i in state["images"]}
    assert state["runs_rows"] == 2


def test_the_check_sees_a_broken_image(report, tmp_path):
    # The same page with one figure gone: the browser check must name it, or it proves nothing.
    copy = tmp_path / "report"
    shutil.copytree(report["index_html"].parent, copy)
    (copy / "loss_vs_flops.png").unlink()
    state = page_state(copy / "index.html")
    assert [i["src"] for i in state["images"] if not i["ok"]] == ["loss_vs_flops.png"]
    with pytest.raises(AssertionError, match="loss_vs_flops.png"):
        assert_report_renders(copy / "index.html", tmp_path)
