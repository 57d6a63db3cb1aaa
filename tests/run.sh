#!/usr/bin/env bash
# The whole test suite, from a fresh clone:
#   1. a venv with the export extra runs every test that needs torch;
#   2. a second venv with only the runtime dependencies (no torch, torchvision or onnx) runs
#      tests/torchfree against a bundle exported by step 1;
#   3. the same venv, given the demo extra (onnx and matplotlib, still no torch), runs the README's
#      first command (tests/torchfree_demo).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
export_venv="${NEST_RT_VENV:-$repo/.venv}"
runtime_venv="$repo/.venv-notorch"

python3 -m venv "$export_venv"
"$export_venv/bin/pip" install --quiet --disable-pip-version-check -e ".[export,dev,h5,plot]"
"$export_venv/bin/python" -m pytest --ignore=tests/torchfree --ignore=tests/torchfree_demo tests

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$export_venv/bin/python" tests/torchfree/prepare_bundle.py "$work" > /dev/null

rm -rf "$runtime_venv"  # always fresh, so nothing from an export install can leak in
python3 -m venv "$runtime_venv"
"$runtime_venv/bin/pip" install --quiet --disable-pip-version-check ".[dev,h5]"
# Run from outside the repository so that the installed package, not the source tree, is tested.
cd "$work"
NEST_RT_TORCHFREE_DIR="$work" "$runtime_venv/bin/pytest" --noconftest --rootdir "$repo" \
    "$repo/tests/torchfree"
"$runtime_venv/bin/pip" install --quiet --disable-pip-version-check "$repo[demo]"
"$runtime_venv/bin/pytest" --noconftest --rootdir "$repo" "$repo/tests/torchfree_demo"
