#!/usr/bin/env bash
# onnxruntime-gpu 1.31.1 (CPython 3.12, CUDA 13) for the GPU machine, which has no package index:
# downloaded here, unpacked, recompressed and split into parts small enough for one device command
# each (64 MiB per command). The parts go to .gpu_wheel/pNN/, which git ignores.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
dir="$repo/.gpu_wheel"
rm -rf "$dir" && mkdir -p "$dir/download" "$dir/unpacked"
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 -d "$dir/download" onnxruntime-gpu==1.31.1
python3 -m zipfile -e "$dir"/download/*.whl "$dir/unpacked"
tar -C "$dir/unpacked" -cf - . | xz -9 -T0 > "$dir/ort.tar.xz"
split -b 50M -d "$dir/ort.tar.xz" "$dir/ort.part."
for part in "$dir"/ort.part.*; do
    index="${part##*.}"
    mkdir -p "$dir/p$index" && mv "$part" "$dir/p$index/"
done
rm -rf "$dir/download" "$dir/unpacked" "$dir/ort.tar.xz"
grep -qx ".gpu_wheel/" "$repo/.git/info/exclude" 2>/dev/null || echo ".gpu_wheel/" >> "$repo/.git/info/exclude"
ls -l "$dir"/p*/
