"""`flip-scale report RUN_DIR [RUN_DIR ...] --output DIR`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .render import markdown_table, write_html, write_markdown


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="flip-scale report",
                                 description="Scaling-curve report (plots, tables, index.html) from run directories.")
    ap.add_argument("runs", nargs="+", help="run directories (train.out_dir)")
    ap.add_argument("--output", required=True, help="report directory (created)")
    ap.add_argument("--title", default="FLIP scaling report")
    return ap


def make_report(run_dirs: list[str], output: str, title: str = "FLIP scaling report") -> dict:
    from .plots import write_plots
    from .runs import load_runs
    from .tables import runs_table, table_8

    runs = load_runs(run_dirs)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    figures = write_plots(runs, out)
    sections = [("Runs: throughput and cost", runs_table(runs)),
                ("Table 8: the paper's scaling study beside ours (zero-shot, %)", table_8(runs))]
    md = write_markdown(out, title, sections, figures)
    index = write_html(out, title, sections, figures)
    return {"runs": runs, "figures": figures, "report_md": md, "index_html": index, "sections": sections}


def main_report(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = make_report(args.runs, args.output, args.title)
    except (FileNotFoundError, ValueError) as e:
        print(f"flip-scale report: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # the [report] extra (matplotlib) is missing
        print(f"flip-scale report: error: Python package {e.name!r} is not installed "
              f"(pip install 'flip-scale[report]')", file=sys.stderr)
        return 2
    heading, (headers, rows) = result["sections"][0]
    print(markdown_table(headers, rows))
    for f in result["figures"]:
        print(f"wrote {f}")
    print(f"wrote {result['report_md']}")
    print(f"wrote {result['index_html']}")
    return 0
