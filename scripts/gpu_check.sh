#!/usr/bin/env bash
# Device check of the paper setting (scripts/gpu_check.py): throughput, peak memory and MFU of the
# CoT-SFT step, the latent loop and latent-SFT step, and one GRPO step, at Llama-3.2-1B's shapes.
#
#   scripts/gpu_check.sh                         # one GPU; JSON to results/gpu_check/<host>-<time>.json
#   scripts/gpu_check.sh --peak-tflops 312       # an A100 (the MFU's denominator)
#   scripts/gpu_check.sh --tiny                  # CPU smoke run, seconds
#   sbatch --gpus=1 --cpus-per-task=8 --mem=64G -t 30 scripts/gpu_check.sh   # a SLURM GPU node (submit
#                                                 # from the repository root: sbatch runs a copy of this file)
#
# Needs no hub and no data. Arguments go to scripts/gpu_check.py (`--help` lists them); the output
# file can be changed with GPU_CHECK_OUT=<path> or --out. PYTHON=<interpreter> picks the environment
# (default: the project's .venv, else python3).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ ! -f "$root/scripts/gpu_check.py" ] && [ -n "${SLURM_SUBMIT_DIR:-}" ]; then
  root="$SLURM_SUBMIT_DIR"  # under sbatch, $0 is a copy in SLURM's spool directory
fi
cd "$root"
python="${PYTHON:-.venv/bin/python}"
[ -x "$python" ] || python=python3
out="${GPU_CHECK_OUT:-results/gpu_check/$(hostname -s)-$(date -u +%Y%m%dT%H%M%SZ).json}"
mkdir -p "$(dirname "$out")"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"$python" scripts/gpu_check.py --out "$out" "$@"
echo "written: $out"
