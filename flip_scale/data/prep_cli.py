"""`flip-scale prep ...`: download, tokenizer, synthetic, eval-set builders.

The top-level CLI dispatches `flip-scale prep ARGS` to main_prep(ARGS). Bad input exits
non-zero with one line naming the problem.
"""

from __future__ import annotations

import argparse
import sys

from .presets import PRESETS

PRESET_NAMES = tuple(PRESETS)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flip-scale prep", description="prepare data")
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("download", help="download image-text metadata (Re-LAION, DataComp, LAION) with img2dataset")
    d.add_argument("--url-list", required=True,
                   help="metadata parquet file, folder (searched recursively) or comma list")
    d.add_argument("--output", required=True, help="shard directory (local or shared filesystem)")
    d.add_argument("--preset", default=None, choices=sorted(PRESET_NAMES),
                   help="the dataset's column names, filters and extra columns (flags below override it)")
    d.add_argument("--image-size", type=int, default=480)
    d.add_argument("--resize-mode", default="keep_ratio",
                   choices=["keep_ratio", "keep_ratio_largest", "center_crop", "border", "no"])
    d.add_argument("--processes", type=int, default=16)
    d.add_argument("--threads", type=int, default=128)
    d.add_argument("--samples-per-shard", type=int, default=10000)
    d.add_argument("--url-col", default=None, help="default: the preset's, else URL")
    d.add_argument("--caption-col", default=None, help="default: the preset's, else TEXT")
    d.add_argument("--nsfw-col", default=None, help="column --drop-nsfw reads (default NSFW)")
    d.add_argument("--punsafe-col", default=None, help="column --max-punsafe reads (default punsafe)")
    d.add_argument("--similarity-col", default=None,
                   help="column --min-similarity reads (default similarity; datacomp: "
                        "clip_b32_similarity_score, or clip_l14_similarity_score)")
    d.add_argument("--bbox-col", default=None,
                   help="boxes to blur (datacomp: face_bboxes); '' turns blurring off")
    d.add_argument("--save-additional-columns", default=None,
                   help="comma list (default: the preset's extra columns that are present)")
    d.add_argument("--drop-nsfw", action="store_true", help="drop rows tagged NSFW")
    d.add_argument("--drop-unsure", action="store_true", help="also drop rows tagged UNSURE")
    d.add_argument("--max-punsafe", type=float, default=None)
    d.add_argument("--min-similarity", type=float, default=None)
    d.add_argument("--timeout", type=int, default=10, help="per-URL timeout, seconds")
    d.add_argument("--retries", type=int, default=0)
    d.add_argument("--distributor", default="multiprocessing", choices=["multiprocessing", "pyspark"],
                   help="pyspark: a Spark cluster (--spark-master) or Spark local mode")
    d.add_argument("--spark-master", default=None,
                   help="e.g. spark://HOST:7077 (default $SPARK_MASTER_URL, else local[PROCESSES])")

    t = sub.add_parser("tokenizer", help="train a WordPiece vocabulary on shard captions")
    t.add_argument("--shards", required=True, help="brace pattern, comma list or directory")
    t.add_argument("--vocab-size", type=int, required=True)
    t.add_argument("--output", required=True, help="tokenizer JSON to write")

    s = sub.add_parser("synthetic", help="write synthetic shards or evaluation sets")
    s.add_argument("--output", required=True)
    s.add_argument("--kind", default="train", choices=["train", "zeroshot", "retrieval"])
    s.add_argument("--samples", type=int, default=10000)
    s.add_argument("--samples-per-shard", type=int, default=1000)
    s.add_argument("--image-size", type=int, default=64)
    s.add_argument("--seed", type=int, default=None, help="default 0 (train), 12345 (eval)")

    e = sub.add_parser("evalset", help="write an ImageFolder as a CLIP_benchmark dataset")
    e.add_argument("--imagefolder", required=True)
    e.add_argument("--output", required=True)
    e.add_argument("--templates", default="openai7", help="openai7 | openai80 | a templates file")
    return p


def main_prep(argv: list[str]) -> int:
    """Entry point of `flip-scale prep`; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        for name in ("vocab_size", "samples", "samples_per_shard", "image_size", "processes", "threads"):
            value = getattr(args, name, None)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if args.cmd == "tokenizer" and args.vocab_size < 16:
            raise ValueError(f"--vocab-size {args.vocab_size} is too small for a WordPiece vocabulary (>= 16)")
        if args.cmd == "download":
            from .download import DownloadConfig, DownloadIncomplete, download

            extra = (args.save_additional_columns.split(",")
                     if args.save_additional_columns else None)
            try:
                download(DownloadConfig(
                    url_list=args.url_list, output=args.output, preset=args.preset,
                    image_size=args.image_size, resize_mode=args.resize_mode,
                    processes=args.processes, threads=args.threads,
                    samples_per_shard=args.samples_per_shard, url_col=args.url_col,
                    caption_col=args.caption_col, nsfw_col=args.nsfw_col,
                    punsafe_col=args.punsafe_col, similarity_col=args.similarity_col,
                    bbox_col=args.bbox_col, save_additional_columns=extra,
                    drop_nsfw=args.drop_nsfw, drop_unsure=args.drop_unsure,
                    max_punsafe=args.max_punsafe, min_similarity=args.min_similarity,
                    timeout_s=args.timeout, retries=args.retries, distributor=args.distributor,
                    spark_master=args.spark_master))
            except DownloadIncomplete as e:  # the summary is printed; the shards so far are kept
                print(f"flip-scale prep download: error: {e}", file=sys.stderr)
                return 1
        elif args.cmd == "tokenizer":
            from .tokenizer import train_tokenizer

            tok = train_tokenizer(args.shards, args.vocab_size, args.output)
            print(f"wrote {args.output} (vocab {tok.vocab_size})")
        elif args.cmd == "synthetic":
            from . import synthetic

            if args.kind == "train":
                paths = synthetic.write_synthetic_shards(
                    args.output, args.samples, args.samples_per_shard,
                    seed=0 if args.seed is None else args.seed, image_size=args.image_size)
                print(f"wrote {len(paths)} shards to {args.output}")
            else:
                seed = synthetic.DEFAULT_EVAL_SEED if args.seed is None else args.seed
                fn = (synthetic.write_synthetic_zeroshot if args.kind == "zeroshot"
                      else synthetic.write_synthetic_retrieval)
                fn(args.output, args.samples, seed=seed, image_size=args.image_size,
                   samples_per_shard=args.samples_per_shard)
                print(f"wrote {args.kind} set to {args.output}")
        elif args.cmd == "evalset":
            from .eval_datasets import write_clip_benchmark_from_imagefolder

            n = write_clip_benchmark_from_imagefolder(args.imagefolder, args.output,
                                                      templates=args.templates)
            print(f"wrote {n} samples to {args.output}")
    except (ValueError, FileNotFoundError) as e:
        print(f"flip-scale prep {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # an optional extra is missing: say which, in one line
        print(f"flip-scale prep {args.cmd}: error: Python package {e.name!r} is not installed "
              f"(pip install 'flip-scale[data]')", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main_prep(sys.argv[1:]))
