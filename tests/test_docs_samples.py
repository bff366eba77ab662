"""The documentation's sample outputs are re-run and compared (tools/docs_samples.py), its links
resolve, and README stays the short entry point it is meant to be."""

import re
import sys
from pathlib import Path

import pytest

from tools import docs_samples as ds

ROOT = Path(__file__).resolve().parent.parent
CHEAP = ds.runnable(ds.selected(ds.doc_files(), slow=False))


def _sample(lines, flags=()):
    return ds.Sample(Path("x.md"), 1, "cmd", frozenset(flags), 0, list(lines))


def test_the_docs_hold_marked_samples_and_every_marker_parses():
    everything = ds.selected(ds.doc_files(), slow=True)
    assert len(everything) >= 10
    assert {s.path.name for s in CHEAP} >= {"README.md", "planning.md", "slurm.md"}
    for s in everything:
        assert s.lines, f"{s.where}: empty sample"
        if "manual" in s.flags:   # names the test that produces and checks it
            test_file = s.command.split("::")[0]
            assert (ROOT / test_file).is_file() and s.command.split("::")[1] in (ROOT / test_file).read_text(), s.where


def test_a_bad_marker_is_one_clear_error(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("<!-- output: flip-scale plan x -->\nno block here\n")
    with pytest.raises(ds.DocsSampleError, match=r"p.md:1: an output marker must be followed by a ``` block"):
        ds.parse(page)
    page.write_text("<!-- output fast: flip-scale plan x -->\n```\nx\n```\n")
    with pytest.raises(ds.DocsSampleError, match="unknown output flag"):
        ds.parse(page)


def test_exact_samples_catch_a_changed_number_and_a_missing_line():
    actual = ["plan: 32 x 8", "weights 0.21", "total 25.06"]
    assert ds.compare(_sample(actual), actual) is None
    assert "weights 0.01" in ds.compare(_sample(["plan: 32 x 8", "weights 0.01", "total 25.06"]), actual)
    assert ds.compare(_sample(["plan: 32 x 8", "total 25.06"]), actual) is not None
    assert ds.compare(_sample(actual + ["extra"]), actual) is not None


def test_ellipsis_stands_for_any_lines_but_keeps_the_order():
    actual = ["a 1", "b 2", "c 3", "d 4", "e 5"]
    assert ds.compare(_sample(["a 1", "...", "d 4", "e 5"]), actual) is None
    assert ds.compare(_sample(["...", "c 3", "..."]), actual) is None
    assert ds.compare(_sample(["...", "e 5"]), actual) is None
    assert ds.compare(_sample(["...", "d 4", "c 3", "..."]), actual) is not None   # order
    assert ds.compare(_sample(["b 2", "..."]), actual) is not None                 # anchored at the start
    assert ds.compare(_sample(["...", "d 4"]), actual) is not None                 # anchored at the end


def test_shape_samples_compare_words_not_measured_values():
    actual = ["step 300/300  loss 2.0408  884.2 samples/s", "demo: done in 2:47"]
    documented = ["step 300/300  loss 1.9000  901.0 samples/s", "demo: done in 3:05"]
    assert ds.compare(_sample(documented, {"shape"}), actual) is None
    assert ds.compare(_sample(documented), actual) is not None
    assert ds.compare(_sample(["step 300/300  loss 1.9  samples/s", "demo: done in 3:05"], {"shape"}), actual) is not None


def test_write_refreshes_a_stale_excerpt_in_place_and_keeps_its_ellipsis(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("intro\n<!-- output: printf 'a 1\\nb 2\\nc 9\\n' -->\n```\na 1\n...\nc 3\n```\nafter\n")
    (sample,) = ds.parse(page)
    assert len(ds.check([sample], log=lambda *_: None)) == 1
    assert ds.check([sample], write=True, log=lambda *_: None) == []
    assert page.read_text() == "intro\n<!-- output: printf 'a 1\\nb 2\\nc 9\\n' -->\n```\na 1\n...\nc 9\n```\nafter\n"
    assert ds.check(ds.parse(page), log=lambda *_: None) == []


def test_write_fixes_several_samples_of_one_page_whose_lengths_change(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("<!-- output: printf 'a\\nb\\nc\\n' -->\n```\nold\n```\nmiddle\n"
                    "<!-- output: echo z -->\n```\nx\ny\n```\nend\n")
    assert ds.check(ds.parse(page), write=True, log=lambda *_: None) == []
    assert page.read_text() == ("<!-- output: printf 'a\\nb\\nc\\n' -->\n```\na\nb\nc\n```\nmiddle\n"
                                "<!-- output: echo z -->\n```\nz\n```\nend\n")


_OUTPUTS = {}


@pytest.mark.parametrize("sample", CHEAP, ids=[s.where for s in CHEAP])
def test_sample_output_matches_its_command(sample):
    """A failure here means the doc is stale: `python -m tools.docs_samples --write` refreshes it
    (check the diff), or edit the block by hand when its lines are gone from the output."""
    if sample.command not in _OUTPUTS:   # README and docs/training.md show the same command
        _OUTPUTS[sample.command] = ds.run(sample.command, timeout_s=600)[1]
    diff = ds.compare(sample, _OUTPUTS[sample.command])
    assert diff is None, f"{sample.where} is stale ({sample.command}):\n{diff}"


def test_the_cli_reports_stale_samples_with_exit_1(tmp_path, capsys):
    page = tmp_path / "p.md"
    page.write_text("<!-- output: echo fresh -->\n```\nstale\n```\n")
    assert ds.main(["--check", str(page)]) == 1
    assert "STALE" in capsys.readouterr().out
    page.write_text("<!-- output: echo fresh -->\n```\nfresh\n```\n")
    assert ds.main(["--check", str(page)]) == 0


# Pages other engineers are writing now; a link to one is allowed until it lands, never after.
PAGES_BEING_WRITTEN = {"reproduce.md", "safe-loading.md", "run-directory.md"}
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("page", ds.doc_files(), ids=lambda p: p.name)
def test_relative_links_resolve(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path = (page.parent / target).resolve()
        if path.name in PAGES_BEING_WRITTEN and not path.exists():
            continue
        assert path.exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"


def test_readme_is_short_links_every_docs_page_and_keeps_the_ci_command():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in readme, f"README does not link docs/{page.name}"
    # .ci/run is "the README's test command on a clean clone".
    assert "\nmake test     # " in readme and "make test" in (ROOT / ".ci" / "run").read_text()


def test_one_python_range_stated_once_and_setup_py_agrees():
    setup = (ROOT / "setup.py").read_text()
    (required,) = re.findall(r'python_requires="([^"]+)"', setup)
    assert required == ">=3.11"
    assert sys.version_info >= (3, 11)
    stated = [(p.name, m) for p in ds.doc_files()
              for m in re.findall(r"Python (\d\.\d+)\+|Python:? \*\*(\d\.\d+) or newer", p.read_text())]
    assert stated == [("README.md", ("", "3.11"))], stated
