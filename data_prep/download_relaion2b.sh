#!/usr/bin/env bash
# Re-LAION-2B-en -> webdataset shards with FLIP's storage settings: what stands in for LAION-2B
# (the paper's data-scaling rows, Table 8) since LAION withdrew the original (docs/data.md).
#
#   data_prep/download_relaion2b.sh METADATA_DIR OUTPUT_DIR [more prep download flags]
#
# METADATA_DIR: the parquet parts of relaion2B-en-research-safe (or -research), searched
# recursively; columns url, caption, and similarity / punsafe / pwatermark / width / height
# where present (the preset saves the quality columns found into each sample's .json).
# Expected: a little under LAION-2B-en's 2.32B rows; at 480 px keep_ratio roughly 150-200 TB; ~20 days on one 16-core
# 2 Gbps machine, so on a cluster: sbatch slurm/download_spark.sh with
# FLIP_DOWNLOAD_ARGS="--preset relaion2b --url-list META --output OUT" (or DISTRIBUTOR=pyspark
# SPARK_MASTER_URL=spark://HOST:7077 here). Shard names get the digits the whole input needs
# (6 for this set: 000000.tar ...). Rerunning the same command resumes; manifest.json lists the
# shards for data.train_shards. Optional filters: MIN_SIMILARITY, MAX_PUNSAFE (the research-safe
# variant is already filtered; a filter whose column the parts lack is an error).
set -euo pipefail
META=${1:?metadata dir}
OUT=${2:?output dir}
PROCESSES=${PROCESSES:-16}
THREADS=${THREADS:-128}
DISTRIBUTOR=${DISTRIBUTOR:-multiprocessing}
FLIP=${FLIP:-flip-scale}
FILTERS=()
[ -n "${MIN_SIMILARITY:-}" ] && FILTERS+=(--min-similarity "$MIN_SIMILARITY")
[ -n "${MAX_PUNSAFE:-}" ] && FILTERS+=(--max-punsafe "$MAX_PUNSAFE")

exec $FLIP prep download --preset relaion2b \
  --url-list "$META" --output "$OUT" \
  --image-size 480 --resize-mode keep_ratio \
  --samples-per-shard 10000 \
  --processes "$PROCESSES" --threads "$THREADS" \
  --timeout 10 --retries 0 \
  --distributor "$DISTRIBUTOR" \
  "${FILTERS[@]}" "${@:3}"
