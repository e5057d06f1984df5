#!/bin/bash
# GPU use of a job, for job scripts (sourced): users cannot set the cluster's Epilog, so a job script starts the
# sampler and prints the summary from its EXIT trap:
#   source "$KD_GAT_PROJECT/slurm/epilog.sh"; kdgat_gpu_sampler_start; trap kdgat_epilog EXIT
# With no GPU in the job (a CPU node, no nvidia-smi, or no GPU allocated) it says so in one line.
KDGAT_GPU_LOG=${KDGAT_GPU_LOG:-${TMPDIR:-/tmp}/kdgat-gpu-${SLURM_JOB_ID:-$$}.csv}
KDGAT_GPU_SAMPLER=

kdgat_gpu_sampler_start() {
  # every 5 s: utilisation (%) and memory used (MiB) of each GPU the job may use; in the background, stopped by PID
  command -v nvidia-smi >/dev/null 2>&1 || return 0
  [ -n "${CUDA_VISIBLE_DEVICES:-}" ] && [ "${CUDA_VISIBLE_DEVICES}" != "NoDevFiles" ] || return 0
  nvidia-smi --query-gpu=index,utilization.gpu,memory.used,memory.total,name --format=csv,noheader,nounits \
      -i "$CUDA_VISIBLE_DEVICES" -l 5 >"$KDGAT_GPU_LOG" 2>/dev/null &
  KDGAT_GPU_SAMPLER=$!
}

kdgat_gpu_summary() {
  # mean and peak utilisation and peak memory per GPU from the samples (or one query now, if none were taken)
  local rows
  rows=$(cat "$KDGAT_GPU_LOG" 2>/dev/null)
  [ -n "$rows" ] || rows=$(nvidia-smi --query-gpu=index,utilization.gpu,memory.used,memory.total,name \
                             --format=csv,noheader,nounits -i "$CUDA_VISIBLE_DEVICES" 2>/dev/null)
  [ -n "$rows" ] || { echo "epilog: GPU ${CUDA_VISIBLE_DEVICES}: nvidia-smi gave no reading"; return 0; }
  printf '%s\n' "$rows" | awk -F', *' '
    { g=$1; n[g]++; u[g]+=$2; if ($2>um[g]) um[g]=$2; if ($3>mm[g]) mm[g]=$3; tot[g]=$4; name[g]=$5 }
    END { for (g in n) printf "epilog: GPU %s (%s): utilisation mean %.0f%%, peak %d%%; memory peak %d of %d MiB (%d samples)\n",
                               g, name[g], u[g]/n[g], um[g], mm[g], tot[g], n[g] }'
}

kdgat_epilog() {
  local rc=$?
  [ -n "$KDGAT_GPU_SAMPLER" ] && kill "$KDGAT_GPU_SAMPLER" 2>/dev/null && wait "$KDGAT_GPU_SAMPLER" 2>/dev/null
  echo "epilog: job ${SLURM_JOB_ID:-?}${SLURM_ARRAY_TASK_ID:+ (task $SLURM_ARRAY_TASK_ID)} on $(hostname -s) exit $rc after ${SECONDS} s"
  if ! command -v nvidia-smi >/dev/null 2>&1; then echo "epilog: no GPU (nvidia-smi not found on $(hostname -s))"
  elif [ -z "${CUDA_VISIBLE_DEVICES:-}" ] || [ "${CUDA_VISIBLE_DEVICES}" = "NoDevFiles" ]; then echo "epilog: no GPU (none allocated to this job)"
  else kdgat_gpu_summary
  fi
  rm -f "$KDGAT_GPU_LOG"
  return $rc
}
