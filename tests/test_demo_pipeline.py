"""`flip-scale demo` end to end at the --tiny size: LAION-style parquet served from 127.0.0.1 ->
`prep download` (img2dataset) -> `prep tokenizer` -> three 2-process FSDP runs (torchrun) at mask
0 / 50% / 75% with in-training zero-shot evals -> `flip-scale report`, checked in Chromium; the
terminal shows one line per stage, progress lines and the headline, nothing else."""
import json
import re
import subprocess
import sys

import pytest

from flip_scale.demo_pipeline import TINY, Demo, StageFailed, eval_times, headline
from flip_scale.report.runs import load_runs

from browser import assert_report_renders
from conftest import ROOT, cli

pytest.importorskip("img2dataset")
pytestmark = pytest.mark.slow

STAGES = ["data", "download", "tokenizer", "train mask 0%", "train mask 50%", "train mask 75%", "report"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    r = subprocess.run(cli("demo", "--tiny", "--output", out), capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, r


def test_terminal_shows_stages_progress_and_headline_only(demo):
    out, r = demo
    lines = r.stdout.splitlines()
    stage_lines = [x for x in lines if re.match(r"\[\d/7\] ", x) and re.search(r"\((\d+\.\d s|\d+:\d\d)\)$", x)]
    assert [re.match(r"\[\d/7\] (.+?)  ", x).group(1).strip() for x in stage_lines] == STAGES
    progress = [x for x in lines if re.search(r"step \d+/\d+  loss [\d.]+  ETA ", x)]
    assert progress, "no progress line with an ETA"
    assert {x[:5] for x in progress} <= {"[4/7]", "[5/7]", "[6/7]"}
    heads = [x for x in lines if x.startswith("headline: ")]
    assert len(heads) == 1 and lines[-1].startswith("demo: done in ") and str(out / "report" / "index.html") in lines[-1]
    assert len(lines) == 1 + len(stage_lines) + len(progress) + 2  # intro, stages, progress, headline, done
    assert r.stderr == ""
    # The download line is the manifest's: 200 images of 205 attempted (2 NSFW rows dropped before).
    manifest = json.loads((out / "shards" / "manifest.json").read_text())
    assert manifest["samples"] == TINY.images and manifest["attempted"] == TINY.images + 5
    assert manifest["failures"] == {"download_error": TINY.dead_links, "decode_resize_error": TINY.not_images}
    assert "200 of 205 images (97.6%); failed: 3 download, 2 decode; 2 NSFW rows dropped" in stage_lines[1]
    for stage in ("download", "tokenizer", "mask0", "mask50", "mask75", "report"):
        assert (out / "logs" / f"{stage}.log").stat().st_size > 0


def test_three_fsdp_runs_with_evals_and_a_headline_from_their_files(demo):
    out, r = demo
    runs = load_runs([out / "runs" / n for n in ("mask0", "mask50", "mask75")])
    assert [x.mask_ratio for x in runs] == [0.0, 0.5, 0.75]
    for run in runs:
        assert run.finished and run.summary["world_size"] == 2 and run.summary["backend"] == "fsdp"
        assert run.samples_seen == TINY.samples and run.config.data.train_shards == str(out / "shards")
        assert len(eval_times(run)) == TINY.evals  # zero-shot at several points, on the held-out set
    head = next(x for x in r.stdout.splitlines() if x.startswith("headline: "))
    assert head == headline([x.path for x in runs])  # recomputed from metrics.jsonl alone
    final = {x.mask_ratio: eval_times(x)[-1] for x in runs}
    assert f"mask 50% reached {final[0.5][1]:.1f}% zero-shot in {final[0.5][0]:.0f} s" in head
    assert f"reached {final[0.0][1]:.1f}% in {final[0.0][0]:.0f} s" in head


def test_report_renders_in_chromium(demo, tmp_path):
    out, _ = demo
    index = out / "report" / "index.html"
    state = assert_report_renders(index, tmp_path, min_images=8)
    assert state["runs_rows"] == 3
    assert "zeroshot_vs_wall.png" in {i["src"] for i in state["images"]}


def test_a_failed_stage_prints_its_log_tail_and_path(tmp_path, capsys):
    d = Demo(str(tmp_path / "d"), TINY)
    d.logs.mkdir(parents=True)
    with pytest.raises(StageFailed) as e:
        d._run("boom", [sys.executable, "-c", "print('line one'); print('the real error'); raise SystemExit(3)"])
    d.fail(e.value)
    err = capsys.readouterr().err
    assert "stage 'boom' failed (exit code 3)" in err and "  the real error" in err
    assert err.strip().endswith(f"full log: {tmp_path / 'd' / 'logs' / 'boom.log'}")


def test_demo_refuses_a_directory_it_did_not_make(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    r = subprocess.run(cli("demo", "--tiny", "--output", tmp_path), capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "not a demo directory" in r.stderr and (tmp_path / "precious.txt").exists()


def test_steps_belong_to_the_quick_demo(tmp_path):
    r = subprocess.run(cli("demo", "--steps", "5", "--output", tmp_path / "d"), capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == ("flip-scale: error: demo: --steps goes with --quick "
                                                      "(the full demo's length is fixed)")
    assert not (tmp_path / "d").exists()



def _trainer_lines(total=40, every=5):
    # The trainer's progress line format (flip_scale/train/trainer.py), one per logged step.
    return [f"step {s}/{total}  samples {64 * s}/{64 * total}  loss {4 - s / 20:.4f}  lr 1.00e-03  "
            f"100.0 samples/s  ETA 0:00:10" for s in range(every, total + 1, every)]


def test_progress_line_eta_from_the_first_step_on():
    from flip_scale.demo_pipeline import RunProgress

    clock = iter(range(100, 1000, 2))  # two seconds between logged steps (5 steps)
    out = []
    p = RunProgress("[4/7] train mask 0%   ", tty=False, emit=lambda s, end="\n": out.append(s + end),
                    clock=lambda: next(clock))
    p.feed("some warning from torchrun\n")
    for line in _trainer_lines():
        p.feed(line + "\n")
    # Non-terminal: a line at each quarter (not one per logged step), none at the end.
    assert [x.split("  ETA")[0] for x in out] == ["[4/7] train mask 0%    step 10/40  loss 3.5000",
                                                 "[4/7] train mask 0%    step 20/40  loss 3.0000",
                                                 "[4/7] train mask 0%    step 30/40  loss 2.5000"]
    # Rate 2 s per 5 steps, measured from the first step line: 30 steps left at step 10 = 12 s.
    assert out[0].endswith("ETA 12.0 s\n") and out[2].endswith("ETA 4.0 s\n")


def test_progress_line_on_a_terminal_is_rewritten_in_place():
    from flip_scale.demo_pipeline import RunProgress

    clock = iter(range(0, 1000, 30))
    out = []
    p = RunProgress("[5/7] train mask 50%  ", tty=True, emit=lambda s, end="\n": out.append(s + end),
                    clock=lambda: next(clock))
    for line in _trainer_lines():
        p.feed(line)
    assert len(out) == 7 and all(x.startswith("\r[5/7] train mask 50%") and x.endswith("\033[K") for x in out)
    assert out[0].endswith("ETA 3:00\033[K")  # 30 s per 5 steps, 30 steps left
