#!/usr/bin/env bash
# LAION-2B-en -> webdataset shards with FLIP's storage settings (the data-scaling runs of Table 8).
#
#   data_prep/download_laion2b.sh METADATA_DIR OUTPUT_DIR
#
# METADATA_DIR holds the 128 LAION-2B-en parquet parts (columns URL, TEXT, WIDTH, HEIGHT,
# similarity; the joined variant adds punsafe and pwatermark). Expected: ~2.32B rows, of which
# roughly 60-70% are still reachable; at 480 px keep_ratio about 150-200 TB; ~20 days on one
# 16-core 2 Gbps machine, so run it on many: DISTRIBUTOR=pyspark (spark-submit, each executor
# downloads whole shards) or DISTRIBUTOR=ray (`ray start` on each node), with OUTPUT_DIR on a
# shared filesystem or an fsspec URL. Rerunning the same command resumes: finished shards
# (those with a _stats.json) are kept, the rest are downloaded again.
set -euo pipefail
META=${1:?metadata dir}
OUT=${2:?output dir}
PROCESSES=${PROCESSES:-16}
THREADS=${THREADS:-128}
DISTRIBUTOR=${DISTRIBUTOR:-multiprocessing}
MAX_PUNSAFE=${MAX_PUNSAFE:-0.5}
FLIP=${FLIP:-flip-scale}

# punsafe > 0.5 is LAION's own "unsafe" cut; the filter is a no-op on metadata without punsafe.
exec $FLIP prep download \
  --url-list "$META" --output "$OUT" \
  --url-col URL --caption-col TEXT \
  --image-size 480 --resize-mode keep_ratio \
  --samples-per-shard 10000 \
  --processes "$PROCESSES" --threads "$THREADS" \
  --save-additional-columns similarity,punsafe,pwatermark \
  --max-punsafe "$MAX_PUNSAFE" \
  --timeout 10 --retries 0 \
  --distributor "$DISTRIBUTOR" \
  "${@:3}"
