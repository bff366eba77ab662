"""LAION download: metadata parquet -> filtered metadata -> img2dataset -> webdataset shards + manifest.

img2dataset does the downloading (its Python API, in this process). What this module adds:
- filters applied before download (NSFW tag, punsafe, CLIP similarity), so no bandwidth is
  spent on rows the run would throw away;
- resumability: the filtered metadata is a deterministic function of the input and filters,
  so img2dataset's `incremental` mode regenerates the same shard ids and skips the shards whose
  `_stats.json` exists (finished ones are kept, missing/partial ones are redone);
- DIR/manifest.json aggregating every shard's stats (also those of earlier runs) and a one-screen
  summary: shards, samples, success rate, failures by kind, bytes, wall time.

Defaults follow FLIP's storage (FLIP_FACTS.md): 480 px short side, keep_ratio, webdataset,
10,000 samples per shard; LAION column names URL/TEXT.
"""

from __future__ import annotations

import glob
import json
import os
import time
from dataclasses import asdict, dataclass, field

from ..fileio import write_text_atomic

MANIFEST = "manifest.json"
# Columns worth keeping beside each sample when the input has them (LAION-400M: NSFW,
# similarity, LICENSE; LAION-2B-en joined: punsafe, pwatermark).
EXTRA_COLUMNS = ("NSFW", "similarity", "LICENSE", "punsafe", "pwatermark")


@dataclass
class DownloadConfig:
    """Settings of one download; field names mirror `flip-scale prep download` options."""

    url_list: str                      # parquet file, directory of parquet files, or comma list
    output: str                        # shard directory (webdataset tars + stats + manifest)
    image_size: int = 480              # FLIP stored 480 px short side
    resize_mode: str = "keep_ratio"    # img2dataset resize mode (keep_ratio, center_crop, border, no)
    processes: int = 16                # download processes (img2dataset processes_count)
    threads: int = 128                 # threads per process (img2dataset thread_count)
    samples_per_shard: int = 10000     # img2dataset number_sample_per_shard
    url_col: str = "URL"
    caption_col: str = "TEXT"
    save_additional_columns: list[str] | None = None  # None: those of EXTRA_COLUMNS present
    drop_nsfw: bool = False            # drop rows whose NSFW column says "NSFW"
    drop_unsure: bool = False          # also drop NSFW == "UNSURE"
    max_punsafe: float | None = None   # drop rows with punsafe above this
    min_similarity: float | None = None  # drop rows with CLIP similarity below this
    timeout_s: int = 10                # per-URL download timeout
    retries: int = 0                   # per-URL retries
    distributor: str = "multiprocessing"  # multiprocessing | pyspark | ray (many machines)
    encode_quality: int = 95
    extra: dict = field(default_factory=dict)  # passed through to img2dataset.download


def _input_files(url_list: str) -> list[str]:
    files: list[str] = []
    for part in [p.strip() for p in url_list.split(",") if p.strip()]:
        if os.path.isdir(part):
            files += sorted(glob.glob(os.path.join(part, "*.parquet")))
        elif os.path.isfile(part):
            files.append(part)
        else:
            raise ValueError(f"--url-list: no such file or directory {part!r}")
    if not files:
        raise ValueError(f"--url-list {url_list!r} holds no parquet files")
    return files


def filter_metadata(cfg: DownloadConfig, meta_dir: str) -> tuple[str, dict]:
    """Write the rows that pass the filters to meta_dir (one parquet per input); return
    (the folder img2dataset reads, filter stats). Deterministic, so reruns give the same shards."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    os.makedirs(meta_dir, exist_ok=True)
    stats = {"rows_in": 0, "rows_kept": 0, "dropped_nsfw": 0, "dropped_punsafe": 0,
             "dropped_similarity": 0}
    for k, path in enumerate(_input_files(cfg.url_list)):
        table = pq.read_table(path)
        stats["rows_in"] += table.num_rows
        for col in (cfg.url_col, cfg.caption_col):
            if col not in table.column_names:
                raise ValueError(f"{path}: no column {col!r} (columns: {table.column_names})")
        drop_tags = ["NSFW"] * cfg.drop_nsfw + ["UNSURE"] * cfg.drop_unsure
        if drop_tags and "NSFW" in table.column_names:
            bad = pc.fill_null(pc.is_in(table["NSFW"], value_set=_pa_strings(drop_tags)), False)
            stats["dropped_nsfw"] += pc.sum(bad).as_py() or 0
            table = table.filter(pc.invert(bad))
        if cfg.max_punsafe is not None and "punsafe" in table.column_names:
            bad = pc.fill_null(pc.greater(table["punsafe"], cfg.max_punsafe), False)
            stats["dropped_punsafe"] += pc.sum(bad).as_py() or 0
            table = table.filter(pc.invert(bad))
        if cfg.min_similarity is not None and "similarity" in table.column_names:
            bad = pc.fill_null(pc.less(table["similarity"], cfg.min_similarity), True)
            stats["dropped_similarity"] += pc.sum(bad).as_py() or 0
            table = table.filter(pc.invert(bad))
        stats["rows_kept"] += table.num_rows
        out = os.path.join(meta_dir, f"part-{k:05d}.parquet")
        tmp = out + ".tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, out)
    return meta_dir, stats


def _pa_strings(values):
    import pyarrow as pa

    return pa.array(values, type=pa.string())


def _columns_present(files: list[str]) -> list[str]:
    import pyarrow.parquet as pq

    return list(pq.read_schema(files[0]).names)


def summarize_shards(output: str) -> dict:
    """Aggregate img2dataset's per-shard `_stats.json` files (all runs) in `output`."""
    shards = []
    total = {"count": 0, "successes": 0, "failed_to_download": 0, "failed_to_resize": 0}
    errors: dict[str, int] = {}
    for path in sorted(glob.glob(os.path.join(output, "*_stats.json"))):
        with open(path) as f:
            st = json.load(f)
        name = os.path.basename(path)[: -len("_stats.json")]
        tar = os.path.join(output, name + ".tar")
        shards.append({"shard": name + ".tar", "samples": st.get("successes", 0),
                       "count": st.get("count", 0),
                       "bytes": os.path.getsize(tar) if os.path.exists(tar) else 0})
        for k in total:
            total[k] += int(st.get(k, 0))
        for msg, n in (st.get("status_dict") or {}).items():
            if msg != "success":
                errors[msg] = errors.get(msg, 0) + int(n)
    top = dict(sorted(errors.items(), key=lambda kv: -kv[1])[:10])
    return {
        "shards": len(shards),
        "samples": total["successes"],
        "attempted": total["count"],
        "success_rate": round(total["successes"] / total["count"], 4) if total["count"] else 0.0,
        "failures": {"download_error": total["failed_to_download"],
                     "decode_resize_error": total["failed_to_resize"]},
        "top_errors": top,
        "bytes": sum(s["bytes"] for s in shards),
        "shard_list": shards,
    }


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


def format_summary(m: dict) -> str:
    """One-screen human summary of a manifest."""
    f = m["failures"]
    lines = [
        f"download summary: {m['output']}",
        f"  shards {m['shards']}   samples {m['samples']:,} of {m['attempted']:,} attempted   "
        f"success rate {m['success_rate']:.1%}",
        f"  failures: download {f['download_error']:,}   decode/resize {f['decode_resize_error']:,}",
        f"  size {_human_bytes(m['bytes'])}   wall time {m['wall_time_s']:.1f} s (this run)",
    ]
    flt = m.get("filter") or {}
    if flt:
        lines.append(f"  filter: {flt['rows_in']:,} rows in, {flt['rows_kept']:,} kept "
                     f"(nsfw -{flt['dropped_nsfw']:,}, punsafe -{flt['dropped_punsafe']:,}, "
                     f"similarity -{flt['dropped_similarity']:,})")
    for msg, n in list(m["top_errors"].items())[:5]:
        lines.append(f"  {n:>8,}  {msg[:100]}")
    return "\n".join(lines)


def download(cfg: DownloadConfig, quiet: bool = False) -> dict:
    """Run (or resume) a download; write DIR/manifest.json, print the summary, return the manifest."""
    # albumentations (imported by img2dataset) phones home for updates unless told not to.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from img2dataset import download as img2dataset_download

    start = time.time()
    files = _input_files(cfg.url_list)  # before creating anything: bad input leaves no trace
    columns = _columns_present(files)
    for flag, col in (("--url-col", cfg.url_col), ("--caption-col", cfg.caption_col)):
        if col not in columns:
            raise ValueError(f"{flag} {col!r}: no such column in {files[0]} (columns: {', '.join(columns)})")
    os.makedirs(cfg.output, exist_ok=True)
    meta_dir = os.path.join(cfg.output, "_meta")
    filters = (cfg.drop_nsfw or cfg.drop_unsure or cfg.max_punsafe is not None
               or cfg.min_similarity is not None)
    if filters:
        url_list, filter_stats = filter_metadata(cfg, meta_dir)
    else:
        url_list, filter_stats = (files[0] if len(files) == 1 else _link_inputs(files, meta_dir)), {}
    extra = cfg.save_additional_columns
    if extra is None:
        extra = [c for c in EXTRA_COLUMNS if c in columns]
    else:
        # The scripts name LAION-2B's joined columns; plain parts lack them. Keep going.
        missing = [c for c in extra if c not in columns]
        if missing:
            print(f"note: input has no column(s) {missing}; not saving them", flush=True)
        extra = [c for c in extra if c in columns]
    # img2dataset treats every top-level *.json as a finished shard's stats (int(name)), so
    # our manifest must be out of its way while it runs.
    manifest_path = os.path.join(cfg.output, MANIFEST)
    if os.path.exists(manifest_path):
        os.replace(manifest_path, manifest_path + ".prev")
    img2dataset_download(
        url_list=url_list, input_format="parquet", url_col=cfg.url_col,
        caption_col=cfg.caption_col, output_folder=cfg.output, output_format="webdataset",
        image_size=cfg.image_size, resize_mode=cfg.resize_mode,
        processes_count=cfg.processes, thread_count=cfg.threads,
        number_sample_per_shard=cfg.samples_per_shard,
        save_additional_columns=extra or None, timeout=cfg.timeout_s, retries=cfg.retries,
        distributor=cfg.distributor, incremental_mode="incremental", enable_wandb=False,
        encode_quality=cfg.encode_quality, **cfg.extra)
    manifest = summarize_shards(cfg.output)
    manifest.update({"output": os.path.abspath(cfg.output), "wall_time_s": round(time.time() - start, 2),
                     "filter": filter_stats, "settings": asdict(cfg)})
    write_text_atomic(manifest_path, json.dumps(manifest, indent=2))
    if not quiet:
        print(format_summary(manifest), flush=True)
    return manifest


def _link_inputs(files: list[str], meta_dir: str) -> str:
    """Several unfiltered inputs: symlink them into one folder, the form img2dataset reads."""
    os.makedirs(meta_dir, exist_ok=True)
    for k, path in enumerate(files):
        link = os.path.join(meta_dir, f"part-{k:05d}.parquet")
        if not os.path.lexists(link):
            os.symlink(os.path.abspath(path), link)
    return meta_dir
