"""Open a report page in real headless Chromium: which <img> loaded, is the runs table there, and
does the rendered page show the figures (coloured plot lines, not a blank or broken page)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]
# Runs at the page's load event (after every image has loaded or failed) and leaves the result
# in the DOM, which --dump-dom prints.
PROBE = """<script>window.addEventListener('load', function () {
  var imgs = Array.from(document.images).map(function (i) {
    return {src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth, h: i.naturalHeight};
  });
  var pre = document.createElement('pre'); pre.id = 'browser-check';
  pre.textContent = JSON.stringify({images: imgs, table_ids: Array.from(document.querySelectorAll('table')).map(function (t) { return t.id; }),
                                    runs_rows: document.querySelectorAll('#table0 tbody tr').length});
  document.body.appendChild(pre);
});</script>"""


def chromium() -> str:
    """The Chromium binary; installed with apt-get (Debian's `chromium`) when missing and we are root.
    Skips only when it is absent and cannot be installed."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, capture_output=True, timeout=1200)
        if shutil.which("chromium"):
            return shutil.which("chromium")
    pytest.skip("headless Chromium is not installed and could not be installed (needs root and apt-get: "
                "`apt-get install -y chromium`, as `make test` does)")


def _chromium(args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:  # fresh profile every time
        return subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=timeout)


def page_state(index_html: Path) -> dict:
    """Load a copy of the page with PROBE added (same folder, so relative image paths resolve)."""
    index_html = Path(index_html)
    probe_page = index_html.with_name("_browser_check.html")
    probe_page.write_text(index_html.read_text().replace("</body>", PROBE + "</body>"))
    try:
        r = _chromium(["--virtual-time-budget=10000", "--dump-dom", probe_page.as_uri()])
    finally:
        probe_page.unlink()
    m = re.search(r'<pre id="browser-check">(.*?)</pre>', r.stdout, re.S)
    assert m, f"no result from the page in Chromium (rc {r.returncode}): {r.stderr[-1500:]}"
    return json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))


def screenshot(index_html: Path, out_png: Path, width: int = 1400, height: int = 4000) -> Path:
    r = _chromium([f"--screenshot={out_png}", f"--window-size={width},{height}", "--virtual-time-budget=10000",
                   Path(index_html).as_uri()])
    assert Path(out_png).is_file(), f"Chromium wrote no screenshot (rc {r.returncode}): {r.stderr[-1500:]}"
    return Path(out_png)


def coloured_pixels(png: Path) -> int:
    """Pixels with a strong hue: the report's HTML is black, white and grey, so these come from
    the plotted curves inside the figures."""
    with Image.open(png) as im:
        px = np.asarray(im.convert("RGB"), dtype=np.int16)
    return int(((px.max(axis=2) - px.min(axis=2)) > 80).sum())


def assert_report_renders(index_html: Path, tmp_dir: Path, min_images: int = 1) -> dict:
    """Every figure loads in Chromium, the runs table is there, and the page visibly shows plots."""
    state = page_state(index_html)
    broken = [i["src"] for i in state["images"] if not i["ok"]]
    assert not broken, f"images that did not load in Chromium: {broken}"
    assert len(state["images"]) >= min_images
    assert all(i["w"] >= 300 and i["h"] >= 200 for i in state["images"]), state["images"]
    assert "table0" in state["table_ids"] and state["runs_rows"] >= 1, state
    shot = screenshot(index_html, Path(tmp_dir) / "page.png")
    assert coloured_pixels(shot) > 2000, "the rendered page shows no plotted curves"
    return state
