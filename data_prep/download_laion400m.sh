#!/usr/bin/env bash
# The original LAION-400M -> webdataset shards with FLIP's storage settings (FLIP_FACTS.md).
# LAION withdrew this metadata in December 2023 and did not re-release it: this script is for
# those who hold a copy. Everyone else: docs/data.md says what stands in for it.
#
#   data_prep/download_laion400m.sh METADATA_DIR OUTPUT_DIR [more prep download flags]
#
# METADATA_DIR holds the 32 LAION-400M parquet files (columns SAMPLE_ID, URL, TEXT, LICENSE, NSFW,
# similarity, WIDTH, HEIGHT). Expected: ~413M rows; link rot: ~95% of URLs worked at release,
# 87% in 2023, ~68% in 2024, so plan for ~270M usable pairs; ~10k samples per shard, 480 px
# short side (keep_ratio) ~ 25-30 TB. One 16-core 2 Gbps machine does ~1,300 samples/s
# (~3.5 days). Use a fast local DNS resolver (e.g. bind9 / knot-resolver) or the success rate
# drops sharply. Rerunning the same command after an interruption finishes only the missing
# shards. Many machines: slurm/download_spark.sh (a Spark standalone cluster in one Slurm job),
# or DISTRIBUTOR=pyspark with SPARK_MASTER_URL=spark://HOST:7077; OUTPUT_DIR on a shared filesystem.
set -euo pipefail
META=${1:?metadata dir}
OUT=${2:?output dir}
PROCESSES=${PROCESSES:-16}
THREADS=${THREADS:-128}
DISTRIBUTOR=${DISTRIBUTOR:-multiprocessing}
FLIP=${FLIP:-flip-scale}

# The paper trained on the full set: the authors' input pipeline reads every record, with no
# NSFW filter. Append --drop-nsfw (and --drop-unsure) for a filtered set; the preset keeps
# SAMPLE_ID, NSFW, similarity and LICENSE in each sample's .json either way.
exec $FLIP prep download --preset laion400m \
  --url-list "$META" --output "$OUT" \
  --image-size 480 --resize-mode keep_ratio \
  --samples-per-shard 10000 \
  --processes "$PROCESSES" --threads "$THREADS" \
  --timeout 10 --retries 0 \
  --distributor "$DISTRIBUTOR" \
  "${@:3}"
