#!/bin/bash
# FLIP scaling study, row "schedule": L/16, LAION-400M, 25.6B samples (FLIP_FACTS.md Table 8).
# Submit:    sbatch slurm/study_schedule.sh            (or: flip-scale launch recipes/studies/l16_laion400m_25.6b.yaml --template slurm/study_schedule.sh)
# Recipe:    recipes/studies/l16_laion400m_25.6b.yaml (override with FLIP_RECIPE / FLIP_OVERRIDES / FLIP_OUT; see slurm/common.sh)
# Hardware:  32 nodes x 8 GPUs, one task per GPU; `flip-scale plan recipes/studies/l16_laion400m_25.6b.yaml --nodes 32
#            --gpus-per-node 8 --gpu h100` planned
#            16.0h wall-clock, 171 GPU-days (35% MFU assumed).
# Expected:  after unmasked tuning (recipes/studies/tuning/l16_laion400m_25.6b.yaml, chained with --tune): IN-1k zero-shot 73.9; Flickr I->T 89.7, COCO I->T 60.1, Flickr T->I 75.5, COCO T->I 44.4.
# Time:      --time is one job's slice; a preempted or timed-out job checkpoints, requeues itself
#            and resumes, so runs longer than the limit continue on their own.
# Tiny job on a test cluster, same file:
#   FLIP_RECIPE=recipes/test/tiny.yaml FLIP_OUT=/some/dir \
#     sbatch --wait --nodes=2 --ntasks-per-node=1 --cpus-per-task=1 --gpus-per-node=0 --time=10 slurm/study_schedule.sh
#SBATCH --job-name=flip-study-schedule
#SBATCH --nodes=32
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
# 14 cores per GPU task (a DGX H100: 112 / 8); `flip-scale plan` of an L/16 run with data.decode=cpu needs 13.
#SBATCH --cpus-per-task=14
#SBATCH --time=48:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
# --output without --error: the shell and every task (stderr included) log to one file.
#SBATCH --output=%x-%j.out

# Network settings a cluster may need (uncomment and adapt; `ibv_devinfo`, `ip -br addr`):
# export NCCL_SOCKET_IFNAME=ib0          # interface for NCCL's bootstrap/socket traffic (not lo/docker)
# export GLOO_SOCKET_IFNAME=ib0          # same for gloo (CPU collectives, the test cluster)
# export NCCL_IB_HCA=mlx5_0,mlx5_1       # InfiniBand adapters to use; NCCL_IB_DISABLE=1 without IB
# export NCCL_NET_GDR_LEVEL=PHB          # GPUDirect RDMA distance
# export NCCL_DEBUG=INFO                 # log transport choices when a run hangs at start-up
# export FI_PROVIDER=efa FI_EFA_USE_DEVICE_RDMA=1   # AWS EFA (with the aws-ofi-nccl plugin)
# (slurm/common.sh turns on NCCL async error handling and the flight recorder: TORCH_NCCL_*)

: "${FLIP_RECIPE:=recipes/studies/l16_laion400m_25.6b.yaml}"
# sbatch runs a copy of this file, so common.sh is found through FLIP_HOME (default: submit dir).
# shellcheck disable=SC1091
source "${FLIP_HOME:-$SLURM_SUBMIT_DIR}/slurm/common.sh"
