"""Sample outputs in README.md and docs/*.md, re-run and compared, so they cannot go stale.

A sample output is a fenced block right after a marker line naming the command that prints it:

    <!-- output: flip-scale plan recipes/flip/l16_laion400m.yaml --nodes 32 --gpus-per-node 8 --gpu h100 -->
    ```
    plan: recipes/flip/l16_laion400m.yaml on 32 x 8 H100 SXM 80GB = 256 GPUs, ...
    ...
    total wall-clock: 9.7h (104 GPU-days), 1.22x the compute-only 8.0h
    ```

Words between `output` and the colon are flags:
- `slow`: the command trains or downloads; it is checked by `--check --slow`, not in the test suite.
- `manual`: the output comes from a setup a command line cannot build (the Slurm test cluster,
  a frozen rank); the "command" names the test that produces it and asserts its key lines. It is
  listed, never run.
- `shape`: the output holds measurements (times, losses, rates) that differ run to run; every
  number is compared as "a number", so the lines, words and order are checked, not the values.
A line that is exactly `...` in the block stands for any number of output lines (the sample
shows an excerpt). The command runs under bash in a scratch directory that links the
checkout's recipes/, slurm/, bench/, tests/, data_prep/ and docs/, with `flip-scale` and `python`
resolving to this interpreter and this checkout; stdout and stderr are compared together.
The scratch directory and the interpreter are printed as /home/you/flip-scale and
/home/you/venv/bin/python, so samples do not carry the machine they were made on.

    python -m tools.docs_samples --list            # every marked sample: file:line, flags, command
    python -m tools.docs_samples --check [--slow]  # re-run and compare; exit 1 naming each stale sample
    python -m tools.docs_samples --write [--slow]  # re-run and rewrite the stale samples in place
    python -m tools.docs_samples --check --slow --match 'demo --quick'   # only commands containing the text

tests/test_docs_samples.py runs `--check` on the samples without `slow`.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINKED_DIRS = ("recipes", "slurm", "bench", "tests", "data_prep", "docs")
SHOWN_CWD = "/home/you/flip-scale"
SHOWN_PYTHON = "/home/you/venv/bin/python"
MARKER = re.compile(r"^<!-- output(?P<flags>(?: [a-z]+)*): (?P<command>.+?) -->\s*$")
ELLIPSIS = "..."
# Numbers as they appear in outputs: 1,734 / 0.52x / 2.56e+21 / 22.7% / 2:47 (the unit stays).
NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?(?:e[+-]?\d+)?")
FLAGS = {"slow", "shape", "manual"}


class DocsSampleError(Exception):
    """A marker or a sample block that cannot be read."""


@dataclasses.dataclass
class Sample:
    path: Path
    marker_line: int          # 1-based line of the marker
    command: str
    flags: frozenset
    first: int                # 0-based index of the first output line in the file's lines
    lines: list               # the documented output lines

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path}:{self.marker_line}"


def doc_files(root: Path = ROOT) -> list:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def parse(path: Path) -> list:
    """Every marked sample of one Markdown file; a marker not followed by a fenced block is an error."""
    lines = path.read_text().split("\n")
    samples = []
    for i, line in enumerate(lines):
        m = MARKER.match(line)
        if not m:
            continue
        flags = frozenset(m.group("flags").split())
        unknown = flags - FLAGS
        if unknown:
            raise DocsSampleError(f"{path}:{i + 1}: unknown output flag(s) {sorted(unknown)}; known: {sorted(FLAGS)}")
        if i + 1 >= len(lines) or not lines[i + 1].startswith("```"):
            raise DocsSampleError(f"{path}:{i + 1}: an output marker must be followed by a ``` block")
        end = next((j for j in range(i + 2, len(lines)) if lines[j].startswith("```")), None)
        if end is None:
            raise DocsSampleError(f"{path}:{i + 1}: the output block is never closed")
        samples.append(Sample(path, i + 1, m.group("command"), flags, i + 2, lines[i + 2:end]))
    return samples


def shape(line: str) -> str:
    return NUMBER.sub("#", line.rstrip())


def align(documented: list, actual: list):
    """Match the documented lines to the actual ones, `...` lines matching any run of lines.

    Lines are aligned by their shape (numbers as "#"), so a stale number still finds its line;
    returns [(documented index, actual index)] for every non-`...` line, or None when the
    documented lines do not occur in order."""
    segments, current = [], []
    for k, line in enumerate(documented):
        if line.strip() == ELLIPSIS:
            segments.append(current)
            current = []
        else:
            current.append(k)
    segments.append(current)
    free_start = documented[:1] != [] and documented[0].strip() == ELLIPSIS
    free_end = documented[-1:] != [] and documented[-1].strip() == ELLIPSIS
    pairs, pos = [], 0
    for n, seg in enumerate(segments):
        if not seg:
            continue
        want = [shape(documented[k]) for k in seg]
        is_first, is_last = n == 0, n == len(segments) - 1
        if is_first and not free_start:
            candidates = [0]
        elif is_last and not free_end:
            candidates = [len(actual) - len(seg)]
        else:
            candidates = range(pos, len(actual) - len(seg) + 1)
        for start in candidates:
            if start >= pos and [shape(a) for a in actual[start:start + len(seg)]] == want:
                pairs.extend(zip(seg, range(start, start + len(seg))))
                pos = start + len(seg)
                break
        else:
            return None
    if not any(documented[k].strip() == ELLIPSIS for k in range(len(documented))) and len(actual) != len(documented):
        return None
    return pairs


def compare(sample: Sample, actual: list):
    """None when the sample matches the output, else a short unified diff."""
    pairs = align(sample.lines, actual)
    if pairs is not None:
        key = shape if "shape" in sample.flags else str.rstrip
        if all(key(sample.lines[d]) == key(actual[a]) for d, a in pairs):
            return None
    diff = difflib.unified_diff(sample.lines, actual, "documented", "actual", lineterm="", n=1)
    return "\n".join(list(diff)[:60])


def refreshed(sample: Sample, actual: list):
    """The sample's block rewritten from the actual output, keeping its `...` excerpting; None when
    the documented lines no longer occur in the output (edit the block by hand)."""
    if not any(line.strip() == ELLIPSIS for line in sample.lines):
        return list(actual)
    pairs = align(sample.lines, actual)
    if pairs is None:
        return None
    new = list(sample.lines)
    for d, a in pairs:
        new[d] = actual[a]
    return new


def run(command: str, timeout_s: float) -> tuple:
    """(exit status, output lines) of a marker's command, in a scratch copy of the checkout's layout."""
    with tempfile.TemporaryDirectory(prefix="docs-sample-") as tmp:
        work, shims = Path(tmp) / "w", Path(tmp) / "bin"
        work.mkdir()
        shims.mkdir()
        for name in LINKED_DIRS:
            if (ROOT / name).exists():
                (work / name).symlink_to(ROOT / name)
        (shims / "flip-scale").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m flip_scale "$@"\n')
        (shims / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        for shim in shims.iterdir():
            shim.chmod(0o755)
        env = dict(os.environ)
        env["PATH"] = f"{shims}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        env.setdefault("COLUMNS", "200")
        try:
            proc = subprocess.run(["bash", "-c", command], cwd=work, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None, [f"(timed out after {timeout_s:.0f} s)"]
        out = proc.stdout
        for real, shown in ((str(work.resolve()), SHOWN_CWD), (str(work), SHOWN_CWD),
                            (sys.executable, SHOWN_PYTHON)):
            out = out.replace(real, shown)
        return proc.returncode, out.rstrip("\n").split("\n")


def selected(files, slow: bool) -> list:
    samples = [s for f in files for s in parse(f)]
    return [s for s in samples if slow or "slow" not in s.flags]


def runnable(samples) -> list:
    return [s for s in samples if "manual" not in s.flags]


def check(samples, write: bool = False, timeout_s: float = 600, log=print) -> list:
    """Re-run each sample; returns the stale ones as (sample, diff). With write, rewrites them."""
    stale, edits, outputs = [], [], {}
    for sample in samples:
        if sample.command not in outputs:   # several pages may show one command's output
            outputs[sample.command] = run(sample.command, timeout_s)[1]
        actual = outputs[sample.command]
        diff = compare(sample, actual)
        if diff is None:
            log(f"ok     {sample.where}: {sample.command}")
            continue
        if write:
            new = refreshed(sample, actual)
            if new is not None:
                edits.append((sample, new))
                log(f"wrote  {sample.where}: {sample.command}")
                continue
            log(f"STALE  {sample.where}: the documented lines are no longer in the output; edit the block by hand")
        else:
            log(f"STALE  {sample.where}: {sample.command}")
        log(diff)
        stale.append((sample, diff))
    # Bottom-up within each file, so a block that changes length does not move the ones still to write.
    for sample, new in sorted(edits, key=lambda e: (str(e[0].path), -e[0].first)):
        lines = sample.path.read_text().split("\n")
        lines[sample.first:sample.first + len(sample.lines)] = new
        sample.path.write_text("\n".join(lines))
    return stale


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.docs_samples", description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--list", action="store_true", help="list every marked sample")
    mode.add_argument("--check", action="store_true", help="re-run and compare; exit 1 when any is stale")
    mode.add_argument("--write", action="store_true", help="re-run and rewrite stale samples in place")
    ap.add_argument("--slow", action="store_true", help="include samples marked slow (training, downloads)")
    ap.add_argument("--match", default="", help="only samples whose command contains this text")
    ap.add_argument("--timeout-s", type=float, default=1800, help="per command")
    ap.add_argument("files", nargs="*", type=Path, help="Markdown files (default: README.md and docs/*.md)")
    args = ap.parse_args(argv)
    files = [f.resolve() for f in args.files] or doc_files()
    try:
        samples = [s for s in selected(files, args.slow or args.list) if args.match in s.command]
    except DocsSampleError as e:
        print(f"docs_samples: error: {e}", file=sys.stderr)
        return 2
    if args.list:
        for s in samples:
            print(f"{s.where}  [{' '.join(sorted(s.flags)) or 'exact'}]  {s.command}")
        return 0
    stale = check(runnable(samples), write=args.write, timeout_s=args.timeout_s)
    if stale:
        print(f"docs_samples: {len(stale)} of {len(samples)} sample(s) stale", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
