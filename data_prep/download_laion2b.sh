#!/usr/bin/env bash
# The original LAION-2B-en (withdrawn by LAION in December 2023). For a new download use
# data_prep/download_relaion2b.sh (Re-LAION-2B-en, its August 2024 replacement); this script is
# for those who hold a copy of the original parts.
#
#   data_prep/download_laion2b.sh METADATA_DIR OUTPUT_DIR [more prep download flags]
#
# METADATA_DIR holds the 128 LAION-2B-en parquet parts (columns URL, TEXT, WIDTH, HEIGHT,
# similarity; the joined variant adds punsafe and pwatermark). ~2.32B rows -> 232,200 shards,
# named 000000.tar ... 232199.tar (the recipes' pattern: the download pads names to the digits
# the whole input needs). MAX_PUNSAFE=0.5 applies LAION's own unsafe cut (joined parts only: a
# filter whose column is missing is an error).
set -euo pipefail
META=${1:?metadata dir}
OUT=${2:?output dir}
PROCESSES=${PROCESSES:-16}
THREADS=${THREADS:-128}
DISTRIBUTOR=${DISTRIBUTOR:-multiprocessing}
FLIP=${FLIP:-flip-scale}
FILTERS=()
[ -n "${MAX_PUNSAFE:-}" ] && FILTERS+=(--max-punsafe "$MAX_PUNSAFE")

exec $FLIP prep download \
  --url-list "$META" --output "$OUT" \
  --url-col URL --caption-col TEXT \
  --image-size 480 --resize-mode keep_ratio \
  --samples-per-shard 10000 \
  --processes "$PROCESSES" --threads "$THREADS" \
  --save-additional-columns similarity,punsafe,pwatermark \
  --timeout 10 --retries 0 \
  --distributor "$DISTRIBUTOR" \
  "${FILTERS[@]}" "${@:3}"
