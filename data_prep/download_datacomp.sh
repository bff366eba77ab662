#!/usr/bin/env bash
# DataComp-1B / CommonPool -> webdataset shards with FLIP's storage settings.
#
#   data_prep/download_datacomp.sh METADATA_DIR OUTPUT_DIR [more prep download flags]
#
# METADATA_DIR: DataComp's metadata as its download_upstream.py fetches it (nested folders such
# as xlarge/0/*.parquet, searched recursively); columns uid, url, text, original_width,
# original_height, clip_b32_similarity_score, clip_l14_similarity_score, face_bboxes, sha256.
# As DataComp's own downloader does, faces are blurred from face_bboxes (img2dataset's bbox
# column) and uid is saved in each sample's .json. DataComp has no NSFW column.
# Filter: MIN_SIMILARITY on the B/32 score (DataComp's CLIP-score baseline keeps roughly the top
# 30%: 0.28-0.3); SIMILARITY_COL=clip_l14_similarity_score filters on the L/14 score instead.
# Sizes: CommonPool xlarge 12.8B rows (DataComp-1B is its 1.4B filtered subset; use its uids or
# metadata). Expect ~50-60% of URLs to still work. On a cluster: slurm/download_spark.sh.
set -euo pipefail
META=${1:?metadata dir}
OUT=${2:?output dir}
PROCESSES=${PROCESSES:-16}
THREADS=${THREADS:-128}
DISTRIBUTOR=${DISTRIBUTOR:-multiprocessing}
FLIP=${FLIP:-flip-scale}
FILTERS=()
[ -n "${MIN_SIMILARITY:-}" ] && FILTERS+=(--min-similarity "$MIN_SIMILARITY")
[ -n "${SIMILARITY_COL:-}" ] && FILTERS+=(--similarity-col "$SIMILARITY_COL")

exec $FLIP prep download --preset datacomp \
  --url-list "$META" --output "$OUT" \
  --image-size 480 --resize-mode keep_ratio \
  --samples-per-shard 10000 \
  --processes "$PROCESSES" --threads "$THREADS" \
  --timeout 10 --retries 0 \
  --distributor "$DISTRIBUTOR" \
  "${FILTERS[@]}" "${@:3}"
