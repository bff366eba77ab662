"""One run directory as data: its config, metric records, summary (if finished) and evals.

Compute per record: GPU-hours from wall time x world size (the record timestamps, plus the
first logging window), FLOPs = samples seen x train_flops_per_sample of the run's model.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..config import read_run_config
from ..run_dir import RunDir
from ..models.flops import train_flops_per_sample
from ..models.sizes import get_size
from ..metrics import read_jsonl


@dataclass
class Run:
    name: str
    path: Path
    config: object                  # flip_scale.config.Config
    records: list[dict]             # metrics.jsonl, in order
    summary: dict | None            # None while the run is in progress
    evals: dict[str, dict] = field(default_factory=dict)  # dataset -> eval/*.json object

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def model(self) -> str:
        return self.config.model.name

    @property
    def mask_ratio(self) -> float:
        return self.config.model.mask_ratio

    @property
    def batch(self) -> int:
        return self.config.train.global_batch_size

    @property
    def samples(self) -> int:
        """The run's planned length (its schedule)."""
        return self.config.train.samples

    @property
    def data(self) -> str:
        """The data axis: the recipe's data.dataset; runs from before that key, by their shard paths.
        `synthetic` inherited from a test recipe whose shards were replaced on the command line
        says nothing about those shards: their path names them then."""
        dataset = getattr(self.config.data, "dataset", None)
        shards = self.config.data.train_shards
        if not dataset or (dataset == "synthetic" and shards != "synthetic"):
            return data_name(shards)
        return dataset_label(dataset)

    @property
    def samples_seen(self) -> int:
        if self.summary:
            return int(self.summary["samples_seen"])
        return int(self.records[-1]["samples_seen"]) if self.records else 0

    @property
    def world_size(self) -> int:
        if self.summary and "world_size" in self.summary:
            return int(self.summary["world_size"])
        for r in reversed(self.records):  # in progress: samples/s over samples/s per device
            if r.get("samples_per_sec_per_device"):
                return max(round(r["samples_per_sec"] / r["samples_per_sec_per_device"]), 1)
        return 1

    @property
    def train_flops_per_sample(self) -> float:
        m = self.config.model
        size = get_size(m.name, image_size=self.config.data.image_size, text_length=m.text_length)
        return train_flops_per_sample(size, m.mask_ratio, m.text_length, text_mask_ratio=m.text_mask_ratio)

    def wall_hours(self) -> list[float]:
        """Elapsed hours at each record. The first window (before the first record) is estimated
        from its own throughput; time spent stopped between a preemption and a resume counts."""
        if not self.records:
            return []
        first = self.records[0]
        head = first["samples_seen"] / first["samples_per_sec"] if first.get("samples_per_sec") else 0.0
        t0 = first.get("time", 0.0) - head
        return [(r.get("time", t0) - t0) / 3600 for r in self.records]

    def gpu_hours(self) -> list[float]:
        return [h * self.world_size for h in self.wall_hours()]

    @property
    def total_wall_hours(self) -> float:
        if self.summary and self.summary.get("wall_time_s") is not None:
            return self.summary["wall_time_s"] / 3600
        return self.wall_hours()[-1] if self.records else 0.0

    @property
    def total_gpu_hours(self) -> float:
        return self.total_wall_hours * self.world_size

    @property
    def samples_per_sec(self) -> float | None:
        if self.summary and self.summary.get("samples_per_sec"):
            return float(self.summary["samples_per_sec"])
        rates = [r["samples_per_sec"] for r in self.records if r.get("samples_per_sec")]
        return sum(rates) / len(rates) if rates else None

    @property
    def mfu(self) -> float | None:
        vals = [r["mfu"] for r in self.records if r.get("mfu") is not None]
        return sum(vals) / len(vals) if vals else None

    @property
    def final_loss(self) -> float | None:
        if self.summary and self.summary.get("final_loss") is not None:
            return float(self.summary["final_loss"])
        losses = [r["loss"] for r in self.records if "loss" in r]
        return losses[-1] if losses else None

    def accuracy_points(self) -> dict[str, list[tuple[int, float]]]:
        """dataset -> [(samples_seen, top-1 %)] from in-training evals and eval/*.json."""
        points: dict[str, list] = {}
        for r in self.records:
            for key, value in r.items():
                if key.startswith("eval/") and key.endswith("/acc1"):
                    points.setdefault(key.split("/")[1], []).append((int(r["samples_seen"]), 100 * float(value)))
        for dataset, result in self.evals.items():
            if "acc1" in result:
                seen = result.get("samples_seen") or self.samples_seen
                points.setdefault(dataset, []).append((int(seen), 100 * float(result["acc1"])))
        return {k: sorted(set(v)) for k, v in points.items()}


# data.dataset -> the data axis's label (the paper's names for its own datasets). A re-release
# keeps its own name, so a run on it is never labelled with the paper's data (docs/data.md).
DATASET_LABELS = {"laion400m": "LAION-400M", "laion2b": "LAION-2B", "relaion2b": "relaion2b",
                  "datacomp": "datacomp", "synthetic": "synthetic"}
# The paper dataset a re-release stands in for: Re-LAION-2B-en is LAION-2B-en with the flagged
# links removed, so its runs fill Table 8's LAION-2B rows (the table says which data they used).
STANDS_IN_FOR = {"relaion2b": "LAION-2B"}


def dataset_label(dataset: str) -> str:
    return DATASET_LABELS.get(dataset.lower(), dataset)


def paper_data(label: str) -> str:
    """The paper's dataset a run's data label is compared with (Table 8)."""
    return STANDS_IN_FOR.get(label, label)


def data_name(train_shards: str) -> str:
    """A short name for the training data: relaion2b / datacomp / LAION-400M / LAION-2B by path,
    else the last folder. Re-LAION is checked first: a Re-LAION run is never labelled LAION-2B."""
    low = train_shards.lower().replace("-", "").replace("_", "")
    if "relaion" in low:
        return "relaion2b"
    if "datacomp" in low or "commonpool" in low:
        return "datacomp"
    if "laion2b" in low:
        return "LAION-2B"
    if "laion400m" in low:
        return "LAION-400M"
    if train_shards == "synthetic":
        return "synthetic"
    parts = [p for p in train_shards.replace("\\", "/").split("/") if p and "{" not in p and not p.endswith((".tar", ".json"))]
    return parts[-1] if parts else train_shards


def _read_jsonl(path: Path) -> list[dict]:
    return [r for r in read_jsonl(path) if "samples_seen" in r]


def load_run(path: str | Path) -> Run:
    path = Path(path)
    layout = RunDir(path)
    config = read_run_config(path)
    summary_path = layout.summary
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    evals = {}
    for f in sorted(layout.eval.glob("*.json")):
        result = json.loads(f.read_text())
        if result.get("variant"):  # an ablation setting (templates, masked inference), not the run's result
            continue
        # Results written before eval names dropped CLIP_benchmark's `wds_` prefix file the same.
        name = str(result.get("dataset", f.stem))
        evals[name[4:] if name.startswith("wds_") and len(name) > 4 else name] = result
    return Run(path.name, path, config, _read_jsonl(layout.metrics), summary, evals)


def load_runs(paths) -> list[Run]:
    runs = [load_run(p) for p in paths]
    names = [r.name for r in runs]
    for r in runs:  # two runs both called 'run' in different parents: tell them apart
        if names.count(r.name) > 1:
            r.name = f"{r.path.parent.name}/{r.name}"
    return runs
