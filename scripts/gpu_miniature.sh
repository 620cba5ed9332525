#!/usr/bin/env bash
# The GPU miniature: config/gpu_miniature.yaml through Snakemake on one GPU, timed, with the device's memory and
# utilisation sampled every second. What it measured lands in $GPU_RUN_OUT (default: $OUT when set, else
# results/gpu_run/): snakemake.log, nvidia-smi.csv, the run's table.md, benchmarks and logs, summary.txt (wall time,
# peak device memory, the table). scripts/device_check.sh is the first check of a new GPU machine (gpu_check at the
# paper's shapes included); run it first.
#
#   scripts/gpu_miniature.sh                  # one CUDA GPU, from the repository root
#   GPU_MINIATURE_LIMIT=540 scripts/gpu_miniature.sh   # stop after 540 s; the same command again resumes the run
#   scripts/gpu_miniature.sh --dry-run [snakemake args]   # the dry run with the same flags (no GPU; the tests run it)
#   RUN_GPU_CHECK=1 scripts/gpu_miniature.sh  # scripts/gpu_check.sh first (a failure there does not stop the run)
#
# With GPU_MINIATURE_LIMIT Snakemake is stopped at the limit; finished jobs stay cached, an interrupted training job
# resumes from its last checkpoint, so a run longer than one command's limit takes two or more calls on the same
# machine. PYTHON=<interpreter> picks the environment (default: the project's .venv, else python3); its folder goes
# first on PATH, since the workflow's rules call `python -m`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
python="${PYTHON:-.venv/bin/python}"
[ -x "$python" ] || python=python3
python="$(command -v "$python")"
export PATH="$(dirname "$python"):$PATH"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
flags=(--configfile config/gpu_miniature.yaml --cores 16
       --set-resources train:gpu=1 evaluate:gpu=1 --resources gpu=4
       --set-threads train=2 evaluate=2 prepare_data=4 --rerun-incomplete)

if [ "${1:-}" = "--dry-run" ]; then
  exec "$python" -m snakemake -n -p "${flags[@]}" "${@:2}"
fi

out="${GPU_RUN_OUT:-${OUT:-results/gpu_run}}"
mkdir -p "$out"
"$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device (--dry-run needs none)')"
"$python" -c "import torch as t; print(t.__version__, t.cuda.get_device_name(0), 'bf16', t.cuda.is_bf16_supported())" \
  | tee "$out/device.txt"

if [ -n "${RUN_GPU_CHECK:-}" ]; then
  GPU_CHECK_OUT="$out/gpu_check.json" PYTHON="$python" scripts/gpu_check.sh --budget 150 2>&1 | tee "$out/gpu_check.log" \
    || echo "gpu_check failed (see $out/gpu_check.log); the miniature runs anyway"
fi

nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv,noheader,nounits -l 1 \
  > "$out/nvidia-smi.csv" 2>/dev/null &
smi=$!
trap 'kill "$smi" 2>/dev/null || true' EXIT
start=$(date +%s)
status=0
limit=()
[ -n "${GPU_MINIATURE_LIMIT:-}" ] && limit=(timeout --signal=INT --kill-after=60 "$GPU_MINIATURE_LIMIT")
"${limit[@]}" "$python" -m snakemake "${flags[@]}" >> "$out/snakemake.log" 2>&1 || status=$?
seconds=$(( $(date +%s) - start ))
kill "$smi" 2>/dev/null || true

run=results/gpu_miniature
cp -r "$run/table.md" "$run/benchmarks" "$run/logs" "$out/" 2>/dev/null || true
{
  echo "config/gpu_miniature.yaml: snakemake exit status $status, ${seconds} s wall"
  awk -F', ' '{ if ($2 + 0 > peak) peak = $2 + 0; n++; u += $3 }
    END { if (n) printf "device memory peak %d MiB (all jobs), mean utilisation %.0f%% over %d s\n", peak, u / n, n }' \
    "$out/nvidia-smi.csv"
  echo "training jobs (benchmark s):"
  for f in "$run"/benchmarks/train/*/seed*.tsv; do
    [ -f "$f" ] && echo "  ${f#"$run"/benchmarks/train/} $(tail -n 1 "$f" | cut -f1)"
  done
  [ -f "$run/table.md" ] && cat "$run/table.md"
} | tee "$out/summary.txt"
tail -n 30 "$out/snakemake.log"
exit "$status"
