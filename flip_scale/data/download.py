"""Metadata parquet -> filtered metadata -> img2dataset -> webdataset shards + manifest.

img2dataset does the downloading (its Python API, in this process). What this module adds:
- presets (presets.py) for today's open sets: Re-LAION-5B, DataComp, and the original LAION;
- filters applied before download (NSFW tag, punsafe, CLIP similarity), so no bandwidth is
  spent on rows the run would throw away; a filter whose column is missing is an error;
- resumability: the filtered metadata is a deterministic function of the input and filters,
  so img2dataset's `incremental` mode regenerates the same shard ids and skips the shards whose
  `_stats.json` exists (finished ones are kept, missing/partial ones are redone);
- DIR/manifest.json aggregating every shard's stats (also those of earlier runs) and a one-screen
  summary: shards, samples, success rate, failures by kind, bytes, wall time; a run that leaves
  shards unfinished raises DownloadIncomplete (the CLI exits non-zero) after writing both;
- the pyspark distributor on a real cluster (spark.py).

Defaults follow FLIP's storage (FLIP_FACTS.md): 480 px short side, keep_ratio, webdataset,
10,000 samples per shard.
"""

from __future__ import annotations

import glob
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace

from ..fileio import write_text_atomic
from .presets import get_preset

MANIFEST = "manifest.json"


class DownloadIncomplete(RuntimeError):
    """Shards the input defines were not written (img2dataset gave up on them)."""


@dataclass
class DownloadConfig:
    """Settings of one download; field names mirror `flip-scale prep download` options.

    Column fields left None come from the preset (or, without one, LAION-400M's names)."""

    url_list: str                      # parquet file, directory (searched recursively) or comma list
    output: str                        # shard directory (webdataset tars + stats + manifest)
    preset: str | None = None          # laion400m | relaion2b | datacomp (presets.py)
    image_size: int = 480              # FLIP stored 480 px short side
    resize_mode: str = "keep_ratio"    # img2dataset resize mode (keep_ratio, center_crop, border, no)
    processes: int = 16                # download processes (img2dataset processes_count)
    threads: int = 128                 # threads per process (img2dataset thread_count)
    samples_per_shard: int = 10000     # img2dataset number_sample_per_shard
    url_col: str | None = None         # image URL column
    caption_col: str | None = None     # caption column
    nsfw_col: str | None = None        # tag column read by drop_nsfw / drop_unsure
    punsafe_col: str | None = None     # column read by max_punsafe
    similarity_col: str | None = None  # column read by min_similarity (DataComp: B/32 or L/14 score)
    bbox_col: str | None = None        # boxes to blur (DataComp: face_bboxes); "" turns blurring off
    save_additional_columns: list[str] | None = None  # None: the preset's extra columns present
    drop_nsfw: bool = False            # drop rows whose NSFW column says "NSFW"
    drop_unsure: bool = False          # also drop NSFW == "UNSURE"
    max_punsafe: float | None = None   # drop rows with punsafe above this
    min_similarity: float | None = None  # drop rows with CLIP similarity below this
    timeout_s: int = 10                # per-URL download timeout
    retries: int = 0                   # per-URL retries
    distributor: str = "multiprocessing"  # multiprocessing | pyspark (many machines)
    spark_master: str | None = None    # pyspark: master URL (default $SPARK_MASTER_URL, else local[processes])
    spark_conf: dict = field(default_factory=dict)  # pyspark: extra SparkSession settings
    encode_quality: int = 95
    extra: dict = field(default_factory=dict)  # passed through to img2dataset.download


def resolve_columns(cfg: DownloadConfig) -> tuple[DownloadConfig, list[str]]:
    """Fill the column fields left None from the preset; return (config, what the preset set)."""
    preset = get_preset(cfg.preset)
    said = []
    for name in ("url_col", "caption_col", "nsfw_col", "punsafe_col", "similarity_col", "bbox_col"):
        if getattr(cfg, name) is None:
            cfg = replace(cfg, **{name: getattr(preset, name)})
            said.append(f"{name}={getattr(cfg, name) or '(none)'}")
    if cfg.bbox_col == "":
        cfg = replace(cfg, bbox_col=None)
    return cfg, said


def _local_path(value: str, flag: str) -> str:
    """file:// and plain paths become absolute local paths (Spark executors resolve relative
    ones from their own working directory); other fsspec URLs are refused: the manifest, the
    summary and data.train_shards' relative shard names all live on a filesystem."""
    if value.startswith("file://"):
        value = value[len("file://"):]
    elif "://" in value:
        raise ValueError(f"{flag} {value!r}: only local or shared-filesystem paths are supported "
                         f"(download to a shared filesystem, then copy the folder to the object store)")
    return os.path.abspath(os.path.expanduser(value))


def _input_files(url_list: str) -> list[str]:
    files: list[str] = []
    for part in [p.strip() for p in url_list.split(",") if p.strip()]:
        path = _local_path(part, "--url-list")
        if os.path.isdir(path):
            # DataComp ships nested folders (xlarge/0/*.parquet): search the whole tree.
            files += sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True))
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise ValueError(f"--url-list: no such file or directory {part!r}")
    if not files:
        raise ValueError(f"--url-list {url_list!r} holds no parquet files (searched recursively)")
    return files


def _filters(cfg: DownloadConfig) -> list[tuple[str, str | None]]:
    """(flag, column) of every filter the user asked for."""
    out: list[tuple[str, str | None]] = []
    if cfg.drop_nsfw or cfg.drop_unsure:
        out.append(("--drop-nsfw" if cfg.drop_nsfw else "--drop-unsure", cfg.nsfw_col))
    if cfg.max_punsafe is not None:
        out.append(("--max-punsafe", cfg.punsafe_col))
    if cfg.min_similarity is not None:
        out.append(("--min-similarity", cfg.similarity_col))
    return out


_COLUMN_FLAG = {"--drop-nsfw": "--nsfw-col", "--drop-unsure": "--nsfw-col",
                "--max-punsafe": "--punsafe-col", "--min-similarity": "--similarity-col"}


def check_columns(cfg: DownloadConfig, files: list[str]) -> list[str]:
    """Every column the download reads must exist in every input file: one line naming the
    flag, the column and the columns that do exist. Returns the first file's columns."""
    import pyarrow.parquet as pq

    need = [("--url-col", cfg.url_col), ("--caption-col", cfg.caption_col)] + _filters(cfg)
    if cfg.bbox_col:
        need.append(("--bbox-col", cfg.bbox_col))
    preset = f"the {cfg.preset} preset" if cfg.preset else "this input"
    first = None
    for path in files:
        columns = list(pq.read_schema(path).names)
        first = first if first is not None else columns
        for flag, col in need:
            if col is None:
                raise ValueError(f"{flag}: {preset} has no column for it (columns: {', '.join(columns)}); "
                                 f"name one with {_COLUMN_FLAG[flag]} or drop {flag}")
            if col not in columns:
                raise ValueError(f"{flag} needs column {col!r}, which {path} lacks "
                                 f"(columns: {', '.join(columns)})")
    return first or []


def filter_metadata(cfg: DownloadConfig, meta_dir: str, files: list[str]) -> tuple[list[int], dict]:
    """Write the rows that pass the filters to meta_dir (one parquet per input); return
    (rows kept per part, filter stats). Deterministic, so reruns give the same shards."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    os.makedirs(meta_dir, exist_ok=True)
    stats = {"rows_in": 0, "rows_kept": 0, "dropped_nsfw": 0, "dropped_punsafe": 0,
             "dropped_similarity": 0}
    kept = []
    for k, path in enumerate(files):
        table = pq.read_table(path)
        stats["rows_in"] += table.num_rows
        drop_tags = ["NSFW"] * cfg.drop_nsfw + ["UNSURE"] * cfg.drop_unsure
        if drop_tags:
            bad = pc.fill_null(pc.is_in(table[cfg.nsfw_col], value_set=_pa_strings(drop_tags)), False)
            stats["dropped_nsfw"] += pc.sum(bad).as_py() or 0
            table = table.filter(pc.invert(bad))
        if cfg.max_punsafe is not None:
            bad = pc.fill_null(pc.greater(table[cfg.punsafe_col], cfg.max_punsafe), False)
            stats["dropped_punsafe"] += pc.sum(bad).as_py() or 0
            table = table.filter(pc.invert(bad))
        if cfg.min_similarity is not None:
            bad = pc.fill_null(pc.less(table[cfg.similarity_col], cfg.min_similarity), True)
            stats["dropped_similarity"] += pc.sum(bad).as_py() or 0
            table = table.filter(pc.invert(bad))
        stats["rows_kept"] += table.num_rows
        kept.append(table.num_rows)
        out = os.path.join(meta_dir, f"part-{k:05d}.parquet")
        tmp = out + ".tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, out)
    return kept, stats


def _pa_strings(values):
    import pyarrow as pa

    return pa.array(values, type=pa.string())


def _rows(path: str) -> int:
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows


def shard_name_digits(num_shards: int) -> int:
    """Digits of the shard names: img2dataset zero-pads to oom_shard_count digits and simply
    writes longer names past them (99999.tar, 100000.tar), which no brace pattern matches; so
    pad to what the whole input needs (LAION-2B at 10,000 a shard: 232,200 shards, 6 digits)."""
    return max(5, len(str(max(num_shards - 1, 0))))


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


def _failed_shards(manifest: dict, rows_per_part: list[int], samples_per_shard: int,
                   digits: int) -> tuple[list[str], int]:
    """Shards the input defines (img2dataset numbers them across the parts in order) that have
    no stats file, and the rows they hold."""
    done = {int(s["shard"].split(".")[0]) for s in manifest["shard_list"]}
    failed, rows, shard_id = [], 0, 0
    for n in rows_per_part:
        for k in range(math.ceil(n / samples_per_shard)):
            if shard_id not in done:
                failed.append(f"{shard_id:0{digits}d}.tar")
                rows += min(samples_per_shard, n - k * samples_per_shard)
            shard_id += 1
    return failed, rows


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
        f"  failures: download {f['download_error']:,}   decode/resize {f['decode_resize_error']:,}"
        + (f"   failed shards {len(m['failed_shards']):,} ({m['rows_in_failed_shards']:,} rows)"
           if m.get("failed_shards") else ""),
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


def describe(cfg: DownloadConfig, said: list[str], extra: list[str]) -> str:
    """The line `prep download` prints about what the preset set."""
    from .presets import PRESETS

    if not cfg.preset:
        return ""
    blur = f"blur faces from {cfg.bbox_col}" if cfg.bbox_col else "no blurring"
    return (f"preset {cfg.preset} ({PRESETS[cfg.preset].about}): {' '.join(said) or 'all columns given'}; "
            f"saving {', '.join(extra) or 'no extra columns'}; {blur}")


def download(cfg: DownloadConfig, quiet: bool = False) -> dict:
    """Run (or resume) a download; write DIR/manifest.json, print the summary, return the manifest.

    Raises ValueError on bad input (before anything is created) and DownloadIncomplete, after
    writing the manifest, when shards the input defines were not written."""
    start = time.time()
    cfg, said = resolve_columns(cfg)
    if cfg.distributor not in ("multiprocessing", "pyspark"):
        raise ValueError(f"--distributor {cfg.distributor!r}: use multiprocessing (one machine) or "
                         f"pyspark (a Spark cluster; see docs/data.md)")
    output = _local_path(cfg.output, "--output")
    files = _input_files(cfg.url_list)  # before creating anything: bad input leaves no trace
    columns = check_columns(cfg, files)
    master = None
    if cfg.distributor == "pyspark":
        from .spark import resolve_master

        master = resolve_master(cfg.spark_master, cfg.processes)
    extra = cfg.save_additional_columns
    if extra is None:
        extra = [c for c in get_preset(cfg.preset).extra_columns if c in columns]
    else:
        # The scripts name LAION-2B's joined columns; plain parts lack them. Keep going.
        missing = [c for c in extra if c not in columns]
        if missing:
            print(f"note: input has no column(s) {missing}; not saving them", flush=True)
        extra = [c for c in extra if c in columns]
    line = describe(cfg, said, extra)
    if line and not quiet:
        print(line, flush=True)
    # albumentations (imported by img2dataset) phones home for updates unless told not to.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from img2dataset import download as img2dataset_download

    os.makedirs(output, exist_ok=True)
    meta_dir = os.path.join(output, "_meta")
    if _filters(cfg):
        rows_per_part, filter_stats = filter_metadata(cfg, meta_dir, files)
        url_list = meta_dir
    else:
        rows_per_part, filter_stats = [_rows(f) for f in files], {}
        url_list = files[0] if len(files) == 1 else _link_inputs(files, meta_dir)
    _remove_stale_parts(meta_dir, len(files))
    rows = sum(rows_per_part)
    if rows == 0:
        what = (f"the filters kept 0 of {filter_stats['rows_in']:,} rows" if filter_stats
                else "0 rows")
        raise ValueError(f"nothing to download: {what} in --url-list {cfg.url_list}")
    digits = shard_name_digits(sum(math.ceil(n / cfg.samples_per_shard) for n in rows_per_part))
    # img2dataset treats every top-level *.json as a finished shard's stats (int(name)), so
    # our manifest must be out of its way while it runs.
    manifest_path = os.path.join(output, MANIFEST)
    if os.path.exists(manifest_path):
        os.replace(manifest_path, manifest_path + ".prev")
    kwargs = dict(
        url_list=url_list, input_format="parquet", url_col=cfg.url_col,
        caption_col=cfg.caption_col, bbox_col=cfg.bbox_col, output_folder=output,
        output_format="webdataset", image_size=cfg.image_size, resize_mode=cfg.resize_mode,
        processes_count=cfg.processes, thread_count=cfg.threads,
        number_sample_per_shard=cfg.samples_per_shard, oom_shard_count=digits,
        save_additional_columns=list(extra) or None, timeout=cfg.timeout_s, retries=cfg.retries,
        distributor=cfg.distributor, incremental_mode="incremental", enable_wandb=False,
        encode_quality=cfg.encode_quality, **cfg.extra)
    if master is not None:
        from .spark import spark_session

        with spark_session(master, conf=cfg.spark_conf) as spark:
            if not quiet:
                print(f"spark: {spark.sparkContext.applicationId} on {master} "
                      f"(PYSPARK_PYTHON={os.environ['PYSPARK_PYTHON']})", flush=True)
            try:
                _run_img2dataset(img2dataset_download, kwargs)
            except Exception as e:  # noqa: BLE001 - a Spark job aborted (e.g. executors lost
                # past spark.task.maxFailures): the shards it did not finish are counted below
                # as failed, and the exit status says so.
                first = (str(e).strip().splitlines() or [""])[0][:300]
                print(f"spark: the job aborted ({type(e).__name__}: {first}); finished shards are kept",
                      flush=True)
    else:
        _run_img2dataset(img2dataset_download, kwargs)
    manifest = summarize_shards(output)
    failed, failed_rows = _failed_shards(manifest, rows_per_part, cfg.samples_per_shard, digits)
    manifest.update({
        # Every row handed to img2dataset, finished shard or not: success_rate is over the input.
        "attempted": rows,
        "success_rate": round(manifest["samples"] / rows, 4),
        "failed_shards": failed, "rows_in_failed_shards": failed_rows,
        "output": output, "wall_time_s": round(time.time() - start, 2),
        "filter": filter_stats, "settings": asdict(cfg)})
    write_text_atomic(manifest_path, json.dumps(manifest, indent=2))
    if not quiet:
        print(format_summary(manifest), flush=True)
    if failed:
        raise DownloadIncomplete(
            f"{len(failed)} of {len(failed) + manifest['shards']} shards failed ({failed_rows:,} rows; "
            f"listed under failed_shards in {manifest_path}, img2dataset's errors above); "
            f"rerun the same command to retry them")
    return manifest


def _run_img2dataset(img2dataset_download, kwargs: dict) -> None:
    """img2dataset.download, without leaving its logger behind when it raises: the logger is a
    non-daemon spawned process that stops only when download() reaches logger_process.join(),
    so after an exception our interpreter would wait for it forever at exit."""
    import multiprocessing

    try:
        img2dataset_download(**kwargs)
    except BaseException:
        for child in multiprocessing.active_children():
            if type(child).__name__ == "LoggerProcess":
                child.terminate()
                child.join(10)
        raise


def _link_inputs(files: list[str], meta_dir: str) -> str:
    """Several unfiltered inputs: symlink them into one folder, the form img2dataset reads."""
    os.makedirs(meta_dir, exist_ok=True)
    for k, path in enumerate(files):
        link = os.path.join(meta_dir, f"part-{k:05d}.parquet")
        target = os.path.abspath(path)
        if os.path.lexists(link) and not (os.path.islink(link) and os.readlink(link) == target):
            os.remove(link)  # an earlier filtered run's part: this run reads the input itself
        if not os.path.lexists(link):
            os.symlink(target, link)
    return meta_dir


def _remove_stale_parts(meta_dir: str, parts: int) -> None:
    """img2dataset reads every parquet in meta_dir: drop parts an earlier, longer input left."""
    for path in glob.glob(os.path.join(meta_dir, "part-*.parquet")):
        if int(os.path.basename(path)[5:10]) >= parts:
            os.remove(path)
