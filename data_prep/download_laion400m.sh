#!/usr/bin/env bash
# LAION-400M -> webdataset shards with FLIP's storage settings (FLIP_FACTS.md, "LAION data facts").
#
#   data_prep/download_laion400m.sh METADATA_DIR OUTPUT_DIR
#
# METADATA_DIR holds the 32 LAION-400M parquet files (columns SAMPLE_ID, URL, TEXT, LICENSE, NSFW,
# similarity, WIDTH, HEIGHT) of LAION's "laion400m-meta" release (e.g. its Hugging Face mirror).
# Expected: ~413M rows; link rot: ~95% of URLs worked at release, 87% in 2023, ~68% in 2024, so
# plan for ~270M usable pairs; ~10k samples per shard, 480 px short side (keep_ratio) ~ 25-30 TB.
# One 16-core 2 Gbps machine does ~1,300 samples/s (~3.5 days).
# Use a fast local DNS resolver (e.g. bind9 / knot-resolver) or the success rate drops sharply.
# Rerunning the same command after an interruption finishes only the missing shards.
#
# Many machines: the same command with DISTRIBUTOR=pyspark (run under spark-submit with a
# cluster master; each executor downloads whole shards) or DISTRIBUTOR=ray (after `ray start`
# on every node) - img2dataset's distributors; OUTPUT_DIR must then be a shared filesystem or
# an fsspec URL (s3://...).
set -euo pipefail
META=${1:?metadata dir}
OUT=${2:?output dir}
PROCESSES=${PROCESSES:-16}
THREADS=${THREADS:-128}
DISTRIBUTOR=${DISTRIBUTOR:-multiprocessing}
FLIP=${FLIP:-flip-scale}

# The paper trained on the full set: the authors' input pipeline reads every record, with no
# NSFW filter. Append --drop-nsfw (and --drop-unsure) for a filtered set; the NSFW column is
# kept in each sample's .json either way.
exec $FLIP prep download \
  --url-list "$META" --output "$OUT" \
  --url-col URL --caption-col TEXT \
  --image-size 480 --resize-mode keep_ratio \
  --samples-per-shard 10000 \
  --processes "$PROCESSES" --threads "$THREADS" \
  --save-additional-columns NSFW,similarity,LICENSE \
  --timeout 10 --retries 0 \
  --distributor "$DISTRIBUTOR" \
  "${@:3}"
