"""report.md and index.html: the same tables and the same PNGs, two formats."""
from __future__ import annotations

import html
from pathlib import Path

from .plots import caption

INTRO = ("Built by `flip-scale report` from each run's config.yaml, metrics.jsonl, summary.json and "
         "eval/*.json. Wall-clock time is training time from the metric records (in-training evaluations "
         "included); GPU-hours = wall time x GPUs; FLOPs = samples seen x training FLOPs per sample "
         "(3x forward, flip_scale/models/flops.py). A panel named for an axis holds runs that differ in that "
         "axis alone; runs differing in several axes share a panel that names them. Dashed curves are runs "
         "still in progress.")


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in rows]
    return "\n".join(lines)


def html_table(headers: list[str], rows: list[list[str]], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>\n" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>'


def write_markdown(out: Path, title: str, sections: list[tuple[str, object]], figures: list[Path]) -> Path:
    parts = [f"# {title}", "", INTRO, ""]
    for heading, (headers, rows) in sections:
        parts += [f"## {heading}", "", markdown_table(headers, rows), ""]
    if figures:
        parts += ["## Figures", ""]
        parts += [f"![{caption(f)}]({f.name})\n" for f in figures]
    path = out / "report.md"
    path.write_text("\n".join(parts))
    return path


def write_html(out: Path, title: str, sections: list[tuple[str, object]], figures: list[Path]) -> Path:
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#eee}"
             "img{max-width:100%;border:1px solid #ddd;margin:6px 0}")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{style}</style></head><body>", f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(INTRO)}</p>"]
    for i, (heading, (headers, rows)) in enumerate(sections):
        parts += [f"<h2>{html.escape(heading)}</h2>", html_table(headers, rows, f"table{i}")]
    if figures:
        parts.append("<h2>Figures</h2>")
        parts += [f'<figure><img src="{html.escape(f.name)}" alt="{html.escape(caption(f))}">'
                  f"<figcaption>{html.escape(caption(f))}</figcaption></figure>" for f in figures]
    parts.append("</body></html>")
    path = out / "index.html"
    path.write_text("\n".join(parts))
    return path
