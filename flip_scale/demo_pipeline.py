"""`flip-scale demo` (and `make demo`): the whole job in miniature.

A cluster run goes: LAION-style metadata -> `flip-scale prep download` (img2dataset) -> shards
-> `flip-scale prep tokenizer` -> `flip-scale train` under a distributed launcher (FSDP) with
in-training zero-shot evaluation -> `flip-scale report`. The demo does each of those with the
real commands on a laptop-sized problem:

1. data: synthetic captioned shapes written as JPEG files plus a LAION-400M-style parquet (URL,
   TEXT, NSFW, similarity) with a few dead links, non-image bodies and NSFW rows, served over
   HTTP from 127.0.0.1; a held-out zero-shot set (`flip-scale prep synthetic --kind zeroshot`);
2. download: `flip-scale prep download --drop-nsfw` fetches it into webdataset shards;
3. tokenizer: `flip-scale prep tokenizer` trains a WordPiece vocabulary on the shard captions;
4-6. the same small model at mask 0 (the CLIP baseline), 50% and 75% for the same samples, each
   a 2-process FSDP run under torchrun, evaluated zero-shot on the held-out set at several points;
7. report: `flip-scale report` over the three runs (accuracy against wall-clock time, samples
   and FLOPs; loss curves; the runs table), then one headline line computed from the runs' files.

Training is driven only through the command line (`python -m torch.distributed.run ... -m
flip_scale train RECIPE key=value ...`), as a cluster job would, so the demo does not depend on
the trainer's internals. Each command's output goes to DIR/logs/<stage>.log; the terminal gets
one line per stage (with its elapsed time), a progress line with ETA while a run trains, and on
failure the log's tail and its path.

Same samples rather than the same wall-clock budget: the trainer's schedule (warmup, cosine) is
defined in samples, so equal samples give every run a complete schedule, and the accuracy-vs-
time figure then shows what the paper's Figure 1 shows: the masked runs get there sooner.
"""
from __future__ import annotations

import functools
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .demo import DEMO_MARKER, TINY_RECIPE, claim_demo_dir

MASKS = (0.0, 0.5, 0.75)


@dataclass(frozen=True)
class DemoSize:
    """How big each stage is. FULL is `make demo`; TINY keeps the same stages for the test suite."""

    images: int             # captioned images served (all downloadable)
    dead_links: int         # URLs that 404
    not_images: int         # URLs that answer 200 with an HTML body
    nsfw_rows: int          # rows tagged NSFW, dropped by --drop-nsfw before downloading
    image_size: int         # pixels; the tiny model's patch grid follows it (64 px: 8x8 patches)
    heldout: int            # held-out zero-shot images (48 colour+shape classes)
    samples: int            # training samples per run (same for every mask ratio)
    batch: int              # global batch (2 ranks)
    evals: int              # in-training zero-shot evaluations per run (evenly spaced)
    log_every_steps: int


# 64 px puts 64 patches into the tiny ViT, so the image tower dominates the step and masking
# saves real time (at 32 px, 16 patches, fixed per-step costs hide it). 19,200 samples = 300
# steps of 64: the baseline's zero-shot accuracy rises from chance (2%) to its plateau (~28%,
# where a 600-step run also ends) in that time; 10 evaluations draw the rise.
FULL = DemoSize(images=4000, dead_links=12, not_images=6, nsfw_rows=5, image_size=64, heldout=480,
                samples=19_200, batch=64, evals=10, log_every_steps=10)
TINY = DemoSize(images=200, dead_links=3, not_images=2, nsfw_rows=2, image_size=32, heldout=96,
                samples=1_280, batch=64, evals=2, log_every_steps=5)

class StageFailed(Exception):
    def __init__(self, stage: str, log: Path, detail: str = ""):
        super().__init__(stage)
        self.stage, self.log, self.detail = stage, log, detail


def tiny_recipe() -> Path:
    if TINY_RECIPE.is_file():
        return TINY_RECIPE
    return Path(__file__).resolve().parent / "assets" / "tiny.yaml"  # installed without recipes/


def _fmt_s(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group (torchrun forwards it to its ranks), SIGKILL what is left after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class _ImageServer(http.server.SimpleHTTPRequestHandler):
    """/img/NAME serves a file; /missing/NAME 404s; /text/NAME answers 200 with an HTML page
    labelled image/jpeg (as misconfigured real servers do)."""

    def log_message(self, *args):
        pass  # the demo's terminal stays quiet; img2dataset counts the failures

    def do_GET(self):  # noqa: N802 - http.server's name
        kind, _, name = self.path.lstrip("/").partition("/")
        if kind == "missing":
            self.send_error(404)
            return
        if kind == "text":
            body = b"<html>this is not an image</html>"
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.path = "/" + name
        super().do_GET()


def serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_ImageServer, directory=str(directory))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


class RunProgress:
    """Turns the trainer's `step N/T ... loss L ...` lines into one progress line with an ETA.
    The ETA's rate starts at the first step line, so start-up (imports, rendezvous) is left out.
    On a terminal the line is rewritten in place; otherwise (logs, CI) a line per quarter."""

    STEP = re.compile(r"step (\d+)/(\d+)")

    def __init__(self, prefix: str, tty: bool, emit, clock=time.time):
        self.prefix, self.tty, self.emit, self.clock = prefix, tty, emit, clock
        self.first: tuple[float, int] | None = None
        self.quarter = -1

    def feed(self, line: str) -> None:
        m = self.STEP.match(line)
        if not m:
            return
        step, total = int(m.group(1)), int(m.group(2))
        now = self.clock()
        if self.first is None:
            self.first = (now, step)
        t0, s0 = self.first
        if step <= s0:
            return  # no rate yet, so no ETA to show
        eta = (now - t0) / (step - s0) * (total - step)
        loss = re.search(r"loss ([\d.]+)", line)
        text = f"{self.prefix} step {step}/{total}  loss {loss.group(1) if loss else '?'}  ETA {_fmt_s(eta)}"
        if self.tty:
            self.emit("\r" + text + "\033[K", end="")
        elif 4 * step // total > self.quarter and step < total:
            self.quarter = 4 * step // total
            self.emit(text)


class Demo:
    def __init__(self, output: str, size: DemoSize, stream=None):
        self.out = Path(output)
        self.size = size
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.logs = self.out / "logs"
        self.start = time.time()
        self.n_stages = 4 + len(MASKS)
        self.stage_no = 0

    # ---- output ------------------------------------------------------------------------------
    def _print(self, line: str, end: str = "\n") -> None:
        self.stream.write(line + end)
        self.stream.flush()

    def _stage_line(self, name: str, text: str, seconds: float) -> None:
        self._print(f"[{self.stage_no}/{self.n_stages}] {name:<15} {text}  ({_fmt_s(seconds)})")

    def _env(self) -> dict:
        env = dict(os.environ)
        # Subprocesses import this very tree (a checkout run without installing, too).
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("OMP_NUM_THREADS", "1")  # 2 ranks on a laptop: no thread oversubscription
        env.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
        return env

    def _run(self, stage: str, cmd: list[str], on_line=None) -> None:
        """Run a command with its output in logs/<stage>.log; raise StageFailed on a non-zero exit."""
        log = self.logs / f"{stage}.log"
        with open(log, "w", buffering=1) as f:  # line-buffered: the log can be followed live
            f.write("$ " + " ".join(map(str, cmd)) + "\n")
            f.flush()
            # Its own session: on Ctrl-C / a failure here the whole tree (torchrun and its ranks,
            # img2dataset's workers) is stopped by process group, nothing left running.
            proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, env=self._env(), bufsize=1, start_new_session=True)
            try:
                for line in proc.stdout:
                    f.write(line)
                    if on_line:
                        on_line(line)
                rc = proc.wait()
            except BaseException:
                _stop_group(proc)
                raise
        if rc != 0:
            raise StageFailed(stage, log, f"exit code {rc}")

    # ---- stages ------------------------------------------------------------------------------
    def stage(self, name: str, fn):
        self.stage_no += 1
        t0 = time.time()
        text = fn()
        self._stage_line(name, text, time.time() - t0)

    def write_data(self) -> str:
        """Images + LAION-style parquet (with dead links) served from 127.0.0.1; held-out set."""
        from .data.synthetic import write_synthetic_parquet

        s = self.size
        src = self.out / "source"
        self.srv, base = serve(src / "images")
        extra = ([{"URL": f"{base}/missing/{i:06d}.jpg", "TEXT": "a link that died"} for i in range(s.dead_links)]
                 + [{"URL": f"{base}/text/{i:06d}.jpg", "TEXT": "a web page, not an image"}
                    for i in range(s.not_images)]
                 + [{"URL": f"{base}/img/{i:06d}.jpg", "TEXT": "a row tagged unsafe", "NSFW": "NSFW"}
                    for i in range(s.nsfw_rows)])
        self.parquet = src / "laion_style.parquet"
        rows = write_synthetic_parquet(str(self.parquet), str(src / "images"), s.images, seed=0,
                                       base_url=f"{base}/img", image_size=s.image_size, extra_rows=extra)
        self.heldout = self.out / "heldout_zeroshot"
        self._run("heldout", [sys.executable, "-m", "flip_scale", "prep", "synthetic", "--kind", "zeroshot",
                              "--output", self.heldout, "--samples", s.heldout, "--image-size", s.image_size])
        return (f"{rows:,} LAION-style rows ({s.dead_links + s.not_images} broken links) served at {base}; "
                f"{s.heldout} held-out images")

    def download(self) -> str:
        s = self.size
        self.shards = self.out / "shards"
        try:
            self._run("download", [sys.executable, "-m", "flip_scale", "prep", "download",
                                   "--url-list", self.parquet, "--output", self.shards,
                                   "--image-size", s.image_size, "--resize-mode", "center_crop",
                                   "--processes", 1, "--threads", 8, "--samples-per-shard", 1000,
                                   "--timeout", 5, "--drop-nsfw"])
        finally:
            self.srv.shutdown()
            self.srv.server_close()
        m = json.loads((self.shards / "manifest.json").read_text())
        f, flt = m["failures"], m.get("filter") or {}
        return (f"{m['samples']:,} of {m['attempted']:,} images ({m['success_rate']:.1%}); failed: "
                f"{f['download_error']} download, {f['decode_resize_error']} decode; {flt.get('dropped_nsfw', 0)} "
                f"NSFW rows dropped -> {self.shards.relative_to(self.out)}/ ({m['shards']} shards, manifest.json)")

    def tokenizer(self) -> str:
        self.tok = self.out / "tokenizer.json"
        lines = []
        self._run("tokenizer", [sys.executable, "-m", "flip_scale", "prep", "tokenizer", "--shards", self.shards,
                                "--vocab-size", 1000, "--output", self.tok], on_line=lines.append)
        vocab = next((re.search(r"vocab (\d+)", x).group(1) for x in lines if re.search(r"vocab (\d+)", x)), "?")
        return f"WordPiece vocabulary of {vocab} tokens from the captions -> {self.tok.relative_to(self.out)}"

    def train(self, mask: float) -> str:
        s = self.size
        name = f"mask{round(mask * 100)}"
        run_dir = self.out / "runs" / name
        steps = s.samples // s.batch
        overrides = [f"train.out_dir={run_dir}", f"model.mask_ratio={mask}", "parallel.backend=fsdp",
                     # data.dataset names the demo's downloaded shards (tiny.yaml says synthetic)
                     f"data.train_shards={self.shards}", "data.dataset=demo", f"data.tokenizer={self.tok}",
                     f"data.image_size={s.image_size}", "data.workers=0", f"train.samples={s.samples}",
                     f"train.global_batch_size={s.batch}", f"train.warmup_samples={s.samples // 10}",
                     f"train.log_every_steps={s.log_every_steps}", "checkpoint.every_steps=0",
                     f"eval.zeroshot={self.heldout}", f"eval.every_steps={max(1, steps // s.evals)}"]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", _free_port(),
               "-m", "flip_scale", "train", tiny_recipe(), *overrides]
        label = f"train mask {mask:.0%}"
        progress = RunProgress(f"[{self.stage_no}/{self.n_stages}] {label:<15}", self.tty, self._print)

        try:
            self._run(name, cmd, on_line=progress.feed)
        finally:
            if self.tty:
                self._print("\r\033[K", end="")
        summary = json.loads((run_dir / "summary.json").read_text())
        acc = [v["acc1"] for v in summary.get("evals", {}).values()]
        acc_text = f"zero-shot top-1 {100 * acc[0]:.1f}%" if acc else "no zero-shot result"
        self.run_dirs.append(run_dir)
        return (f"{summary['steps']} steps, 2 processes (FSDP), {_fmt_s(summary['wall_time_s'])} training, "
                f"loss {summary['final_loss']:.3f}, {acc_text} -> {run_dir.relative_to(self.out)}/")

    def report(self) -> str:
        self.report_dir = self.out / "report"
        self._run("report", [sys.executable, "-m", "flip_scale", "report", *self.run_dirs, "--output",
                             self.report_dir, "--title", "flip-scale demo: mask 0% (CLIP) vs 50% vs 75% (FLIP)"])
        figs = sorted(self.report_dir.glob("*.png"))
        return f"{len(figs)} figures + runs table -> {(self.report_dir / 'index.html').relative_to(self.out)}"

    def fail(self, e: StageFailed) -> None:
        if self.tty:
            self._print("\r\033[K", end="")  # clear a half-written progress line
        tail = e.log.read_text().splitlines()[-25:]
        print(f"demo: stage {e.stage!r} failed ({e.detail}); last lines of its log:", file=sys.stderr)
        print("\n".join("  " + x for x in tail), file=sys.stderr)
        print(f"demo: full log: {e.log}", file=sys.stderr)

    # ---- whole -------------------------------------------------------------------------------
    def run(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / DEMO_MARKER).write_text("made by `flip-scale demo`; a later demo may replace this directory\n")
        self.logs.mkdir(exist_ok=True)
        self.run_dirs: list[Path] = []
        self._print(f"demo: download -> tokenizer -> 3 FSDP runs (mask 0%, 50%, 75%) -> report, in {self.out} "
                    f"(each command's output in {self.logs})")
        try:
            self.stage("data", self.write_data)
            self.stage("download", self.download)
            self.stage("tokenizer", self.tokenizer)
            for mask in MASKS:
                self.stage(f"train mask {mask:.0%}", functools.partial(self.train, mask))
            self.stage("report", self.report)
        except StageFailed as e:
            self.fail(e)
            return 1
        except KeyboardInterrupt:
            self._print(("\r\033[K" if self.tty else "") + f"demo: interrupted; logs in {self.logs}")
            return 130
        self._print(headline(self.run_dirs))
        self._print(f"demo: done in {_fmt_s(time.time() - self.start)}; open {(self.report_dir / 'index.html')}")
        return 0


def eval_times(run) -> list[tuple[float, float]]:
    """[(seconds of training, zero-shot top-1 %)] at each in-training evaluation of a report Run,
    on the same clock as the report's wall-clock axis."""
    hours = run.wall_hours()
    out = []
    for h, r in zip(hours, run.records):
        acc = next((v for k, v in r.items() if k.startswith("eval/") and k.endswith("/acc1")), None)
        if acc is not None:
            out.append((3600 * h, 100 * float(acc)))
    return out


def headline(run_dirs) -> str:
    """One line from the runs' metrics.jsonl: each masked run's final zero-shot accuracy and time,
    and what the mask-0 baseline had reached by the time the 50% run finished. No tuning."""
    from .report.runs import load_runs

    runs = {r.mask_ratio: r for r in load_runs(run_dirs)}
    points = {m: eval_times(r) for m, r in runs.items()}
    if any(not p for p in points.values()) or 0.0 not in runs:
        return "headline: not every run has a zero-shot evaluation; see the report"
    base = points[0.0]
    parts = []
    for m in sorted(points):
        if m == 0.0:
            continue
        t, acc = points[m][-1]
        parts.append(f"mask {m:.0%} reached {acc:.1f}% zero-shot in {t:.0f} s")
    ref_mask = 0.5 if 0.5 in points else max(points)
    t_ref = points[ref_mask][-1][0]
    by_then = [p for p in base if p[0] <= t_ref]
    if by_then:
        tb, ab = by_then[-1]
        base_text = f"by {t_ref:.0f} s the mask-0 baseline had {ab:.1f}% (its evaluation at {tb:.0f} s)"
    else:
        base_text = f"the mask-0 baseline had no evaluation yet at {t_ref:.0f} s"
    tb, ab = base[-1]
    return f"headline: {'; '.join(parts)}; {base_text} and reached {ab:.1f}% in {tb:.0f} s"


# What the stages import beyond the core install: img2dataset/pyarrow/pandas ([data]), matplotlib ([report]).
NEEDS = ("img2dataset", "pyarrow", "pandas", "matplotlib")


def missing_packages() -> list[str]:
    import importlib.util

    return [name for name in NEEDS if importlib.util.find_spec(name) is None]


def run_full_demo(output: str, size: DemoSize = FULL) -> int:
    missing = missing_packages()
    if missing:  # say so before minutes of work, not in the middle of a stage
        print(f"demo: needs Python package(s) {', '.join(missing)}: pip install 'flip-scale[data,report]' "
              f"(`make demo` does); `flip-scale demo --quick` needs neither", file=sys.stderr)
        return 2
    if not claim_demo_dir(output):
        return 2
    return Demo(output, size).run()
