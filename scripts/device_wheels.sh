#!/usr/bin/env bash
# Download the wheels that scripts/device_check.sh installs on a GPU machine without a package index: the packages of
# scripts/device_wheels.txt (those a stock CUDA image lacks), for Python 3.12 on manylinux x86_64, into $WHEELS
# (default .whl/, which git ignores). Run it on any machine with a package index, then bring the folder along:
#
#   scripts/device_wheels.sh && du -sh .whl
#
# pip matches manylinux tags exactly, hence the list of them; --no-deps because the list is already complete.
set -euo pipefail
cd "$(dirname "$0")/.."
wheels="${WHEELS:-.whl}"
python="${PYTHON:-python3}"
mkdir -p "$wheels"
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
  manylinux1_x86_64 manylinux_2_5_x86_64; do
  platforms+=(--platform "$tag")
done
# One package at a time: a package published only as a source archive (connection-pool, say) is built into a wheel
# here instead (pure Python, so the wheel suits any platform).
for req in $(grep -v '^#' scripts/device_wheels.txt); do
  "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
    -d "$wheels" "$req" 2> /dev/null \
    || "$python" -m pip wheel -q --no-deps -w "$wheels" "$req"
done
echo "$(ls "$wheels"/*.whl | wc -l) wheels, $(du -sh "$wheels" | cut -f1) in $wheels"
