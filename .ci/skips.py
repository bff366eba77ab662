#!/usr/bin/env python3
"""Skipped tests of a pytest run, from its junit XML: print how many and why; under CI (CI=true)
fail when a test that CI must run was skipped (the Slurm cluster tests need root to start the
daemons, the browser tests need Chromium: CI has both, so a skip there hides a broken set-up).

    python3 .ci/skips.py JUNIT.xml        exit 0, or 1 under CI=true when a required test skipped
"""
from __future__ import annotations

import os
import re
import sys
import xml.etree.ElementTree as ET

# A skipped test is required under CI when its module or its skip reason says Slurm or Chromium.
REQUIRED = re.compile(r"slurm|chromium|browser", re.I)


def skipped_tests(junit_xml: str) -> list[tuple[str, str]]:
    """(test id, skip reason) of every skipped test case."""
    out = []
    for case in ET.parse(junit_xml).getroot().iter("testcase"):
        skip = case.find("skipped")
        if skip is not None:
            test = f"{case.get('classname', '')}::{case.get('name', '')}"
            out.append((test, (skip.get("message") or skip.text or "").strip()))
    return out


def required(test: str, reason: str) -> bool:
    return bool(REQUIRED.search(test) or REQUIRED.search(reason))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: skips.py JUNIT.xml", file=sys.stderr)
        return 2
    skips = skipped_tests(argv[0])
    must = [(t, r) for t, r in skips if required(t, r)]
    print(f"skipped tests: {len(skips)} ({len(must)} of them Slurm or Chromium tests)")
    for test, reason in skips:
        print(f"  SKIPPED {test}: {reason}")
    if must and os.environ.get("CI", "").lower() == "true":
        print(f"CI=true: {len(must)} Slurm/Chromium test(s) skipped; CI must run them (root for the Slurm "
              f"daemons, `make chromium`): failing", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
