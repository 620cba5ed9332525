#!/usr/bin/env bash
# The first-GPU check: one command for a machine with a CUDA build of torch preinstalled and no package index (a stock
# CUDA image, a cluster node), in at most 8 minutes (the steps' limits add up to 480 s; not run on a GPU yet). Each
# step is bounded by `timeout` and writes its result to the output folder as soon as it ends, whatever a later step
# does:
#
#   1. env.json       Python, torch and CUDA, the device, bf16 support, the version of every package the pipeline uses
#   2. bf16_rl.json   one GRPO step under bf16 autocast with a trained-size sigma: first log-ratio 0, nothing clipped
#   3. gpu_check.json scripts/gpu_check.py at Llama-3.2-1B's shapes (a few steps of each stage, no checkpoint written):
#                     throughput, peak memory, MFU (the latent step's counting its step decoder; RL in bf16)
#   4. dag/           the test-size DAG (.test/config/config.yaml) through Snakemake on the device under bf16:
#                     every stage's path on CUDA, its table, logs and benchmarks
#   summary.json      each step's exit status and seconds
#
#   scripts/device_check.sh            # the GPU machine, from the repository root
#   scripts/device_check.sh --cpu      # the same steps on the CPU at tiny sizes (the tests run it)
#
# Python: $PYTHON, else python3 (the image's, the one with the CUDA torch; nothing is installed into it). Packages the
# image lacks (snakemake, datasets, jsonschema, mlflow, ...) come from a folder of wheels, $WHEELS (default .whl/),
# installed with --no-index into a folder of their own that goes first on PYTHONPATH. scripts/device_wheels.sh
# downloads that folder on a machine with a package index. Without mlflow the DAG runs with tracking off.
# Output: $DEVICE_CHECK_OUT, else $OUT (the lent GPU machine's folder that comes back), else
# results/device_check/<host>-<time>/. Step limits (seconds): STEP_ENV, STEP_BF16, STEP_GPU_CHECK, STEP_DAG.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
mode=gpu
if [ "${1:-}" = "--cpu" ]; then mode=cpu; shift; fi
python="${PYTHON:-python3}"
out="${DEVICE_CHECK_OUT:-${OUT:-results/device_check/$(hostname -s)-$(date -u +%Y%m%dT%H%M%SZ)}}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
wheels="${WHEELS:-.whl}"
site="$out/.site"
if compgen -G "$wheels/*.whl" > /dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$wheels"/*.whl \
    > "$out/wheels.log" 2>&1 || echo "installing $wheels failed: $out/wheels.log"
fi
export PYTHONPATH="$site:$root${PYTHONPATH:+:$PYTHONPATH}"
# The workflow's rules call `python -m`: the chosen interpreter first on PATH, and snakemake's script beside it.
bin="$out/.bin"
mkdir -p "$bin"
ln -sf "$(command -v "$python")" "$bin/python"
export PATH="$bin:$PATH"

summary="$out/summary.json"
echo "{}" > "$summary"
step() {  # step NAME LIMIT COMMAND...: run it under timeout, log it, record its status and seconds in summary.json
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS status=0
  echo "== $name (limit ${limit} s)"
  timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1 || status=$?
  tail -n 5 "$out/$name.log"
  "$python" - "$summary" "$name" "$status" "$((SECONDS - start))" <<'PY'
import json, sys
path, name, status, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
summary = json.load(open(path))
summary[name] = {"status": status, "seconds": seconds, "timed_out": status in (124, 137)}
json.dump(summary, open(path, "w"), indent=2, sort_keys=True)
PY
  echo "== $name: exit $status in $((SECONDS - start)) s"
}

if [ "$mode" = cpu ]; then  # a CI machine's 2 cores: no time target, only limits against a hang
  device=cpu
  gpu_check=(--tiny --device cpu --parts sft rl)
  dag_flags=(--cores 2)
  : "${STEP_ENV:=120}" "${STEP_BF16:=300}" "${STEP_GPU_CHECK:=300}" "${STEP_DAG:=600}"
else
  device=cuda
  gpu_check=(--budget 100 --sft-steps 3 --latent-steps 2 --rl-steps 1)
  dag_flags=(--cores 8 --set-resources train:gpu=1 evaluate:gpu=1 --resources gpu=2 --set-threads train=2 evaluate=2)
fi

step env "${STEP_ENV:-60}" "$python" scripts/device_check.py env --out "$out/env.json"
step bf16_rl "${STEP_BF16:-90}" "$python" scripts/device_check.py bf16-rl --device "$device" --out "$out/bf16_rl.json"
step gpu_check "${STEP_GPU_CHECK:-180}" "$python" scripts/gpu_check.py "${gpu_check[@]}" --out "$out/gpu_check.json"

# The test-size DAG under bf16, in its own results folder, tracking optional (the image may lack mlflow).
overlay="$out/device_check.yaml"
cat > "$overlay" <<EOF
experiment: device_check_$mode
train: {bf16: true}
eval: {bf16: true}
mlflow: {tracking_uri: $out/mlflow/mlflow.db, required: false}
EOF
rm -rf "results/device_check_$mode"
step dag "${STEP_DAG:-150}" "$python" -m snakemake "${dag_flags[@]}" --configfile .test/config/config.yaml "$overlay"
mkdir -p "$out/dag"
cp -r "results/device_check_$mode/table.md" "results/device_check_$mode/benchmarks" "results/device_check_$mode/logs" \
  "$out/dag/" 2> /dev/null || true

echo "written: $out"
cat "$summary"
"$python" -c "import json, sys; sys.exit(any(s['status'] for s in json.load(open(sys.argv[1])).values()))" "$summary"
