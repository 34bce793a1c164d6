#!/bin/bash
# A SLURM job that runs one momil stage on N nodes x G GPUs with torchrun (srun starts one launcher per node;
# the launchers meet at the first node). Documented in the README ("Running on a cluster"); not run in CI.
#
#   sbatch --nodes 2 --gpus-per-node 4 scripts/slurm_torchrun.sh pretrain --load-data fields/load_data.parquet \
#          --out fm --epochs 400 --batch-fields 32
#
# Every rank reads and writes the shared filesystem: run it from a folder all nodes see. A preempted job
# (SIGTERM) ends after the last finished epoch's checkpoint; submit the same command again to resume, with the
# same nodes x GPUs (another world size is refused, naming both).
#SBATCH --job-name=momil
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --signal=TERM@120
set -euo pipefail
GPUS=${SLURM_GPUS_ON_NODE:-1}
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MOMIL_THREADS=$(( SLURM_CPUS_PER_TASK / GPUS > 0 ? SLURM_CPUS_PER_TASK / GPUS : 1 ))
srun torchrun --nnodes "$SLURM_JOB_NUM_NODES" --nproc-per-node "$GPUS" \
     --rdzv-backend c10d --rdzv-id "$SLURM_JOB_ID" --rdzv-endpoint "$HEAD:29500" \
     -m momil "$@"
