#!/usr/bin/env bash
# The whole test suite, from a fresh clone:
#   1. a venv with the export extra runs every test that needs torch (and, with Node.js and
#      onnxruntime-node from npm, the JavaScript embedding client of tests/embedding; with OpenVINO,
#      the portable graphs in a second engine);
#   2. a second venv with only the runtime dependencies (no torch, torchvision or onnx) runs
#      tests/torchfree against a bundle exported by step 1, once with the newest onnxruntime and
#      once with the oldest that pyproject.toml admits (the range the bundles are claimed to load on);
#   3. the first of those venvs, given the demo extra (onnx and matplotlib, still no torch), runs
#      the README's quick start and its code blocks on the demo bundle (tests/torchfree_demo).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
export_venv="${NEST_RT_VENV:-$repo/.venv}"
runtime_venv="$repo/.venv-notorch"

python3 -m venv "$export_venv"
"$export_venv/bin/pip" install --quiet --disable-pip-version-check -e ".[export,dev,h5,plot,engines,ray]"
# The JavaScript embedding client's onnxruntime-node (tests/test_embedding_js.py), CPU only: its
# install script would otherwise try to fetch CUDA files from the network.
npm ci --prefix tests/embedding --no-audit --no-fund --onnxruntime-node-install-cuda=skip > /dev/null
NEST_RT_REQUIRE_NODE=1 "$export_venv/bin/python" -m pytest --ignore=tests/torchfree --ignore=tests/torchfree_demo tests

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$export_venv/bin/python" tests/torchfree/prepare_bundle.py "$work" > /dev/null

# the lowest onnxruntime the runtime admits, read from pyproject.toml ("onnxruntime>=X")
oldest_onnxruntime="$(python3 -c 'import re, tomllib; deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; print(next(re.fullmatch(r"onnxruntime>=([0-9.]+)", d).group(1) for d in deps if d.startswith("onnxruntime")))')"
oldest_venv="$repo/.venv-notorch-oldest"
for venv in "$runtime_venv" "$oldest_venv"; do
    onnxruntime="onnxruntime"  # the newest
    [ "$venv" = "$oldest_venv" ] && onnxruntime="onnxruntime==$oldest_onnxruntime"
    rm -rf "$venv"  # always fresh, so nothing from an export install can leak in
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check ".[dev,h5]" "$onnxruntime"
    # Run from outside the repository so that the installed package, not the source tree, is tested.
    (cd "$work" && NEST_RT_TORCHFREE_DIR="$work" NEST_RT_EXPECT_ONNXRUNTIME="$onnxruntime" \
        "$venv/bin/pytest" --noconftest --rootdir "$repo" "$repo/tests/torchfree")
done
rm -rf "$oldest_venv"
cd "$work"
"$runtime_venv/bin/pip" install --quiet --disable-pip-version-check "$repo[demo]"
"$runtime_venv/bin/pytest" --noconftest --rootdir "$repo" "$repo/tests/torchfree_demo"
