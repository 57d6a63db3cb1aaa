"""Bundles changed after export, by accident or on purpose: whatever their files say, the runtime
reads nothing outside the bundle folder, never returns data of the wrong shape, and reports each
fault as the documented BundleIntegrityError (exit code 2 with one line from the command line).

Tampered files here usually come with their sha256 in bundle.json edited to match: the hashes
detect corruption, not deliberate changes (docs/safety.md); only --expect-sha256 anchors them.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nest_rt import NEST
from nest_rt.bundle import sha256_file
from nest_rt.errors import BundleIntegrityError
from nest_rt_export import synthetic

from conftest import SUBJECT, VOXELS, edit_json

IMAGES = synthetic.synthetic_images(2, 64, seed=1)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nest_rt.cli", *args], capture_output=True, text=True, timeout=300)


def one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


@pytest.fixture
def bundle(bundle_dir, tmp_path) -> Path:
    """A copy of the session bundle with V1 and lateral only: graphs hard-linked (never edited
    here), everything else copied."""
    copy = tmp_path / "bundle"
    manifest = json.loads((bundle_dir / "bundle.json").read_text())
    graphs = manifest["models"]["fmri-nsd-fwrf"]["graphs"][str(SUBJECT)]
    manifest["models"]["fmri-nsd-fwrf"]["graphs"][str(SUBJECT)] = {roi: graphs[roi] for roi in ("V1", "lateral")}
    kept = {name for entry in manifest["models"]["fmri-nsd-fwrf"]["graphs"][str(SUBJECT)].values()
            for key, name in entry.items() if key in ("graph", "sidecar", "metadata")}
    manifest["files"] = {name: record for name, record in manifest["files"].items() if name in kept}
    for name in kept:
        target = copy / name
        target.parent.mkdir(parents=True, exist_ok=True)
        (os.link if name.endswith(".onnx") else shutil.copyfile)(bundle_dir / name, target)
    (copy / "bundle.json").write_text(json.dumps(manifest))
    return copy


def edit_manifest(bundle: Path, change) -> None:
    edit_json(bundle / "bundle.json", change)


def v1_entry(manifest: dict) -> dict:
    return manifest["models"]["fmri-nsd-fwrf"]["graphs"][str(SUBJECT)]["V1"]


def replace_with_matching_hash(bundle: Path, relative: str, content: bytes) -> None:
    """What someone who edits a file and bundle.json together does."""
    (bundle / relative).write_bytes(content)
    edit_manifest(bundle, lambda m: m["files"][relative].update(sha256=sha256_file(bundle / relative)))


def load_v1(bundle: Path):
    return NEST(bundle).get_encoding_model("fmri-nsd-fwrf", subject=SUBJECT, selection={"roi": "V1"})


@pytest.mark.parametrize("where", ["parent", "absolute"])
def test_manifest_names_outside_the_bundle_are_refused(bundle, tmp_path, where):
    outside = tmp_path / "outside.json"
    sidecar = v1_entry(json.loads((bundle / "bundle.json").read_text()))["sidecar"]
    outside.write_bytes((bundle / sidecar).read_bytes())
    name = "../outside.json" if where == "parent" else str(outside)

    def point_outside(manifest):
        v1_entry(manifest)["sidecar"] = name
        manifest["files"][name] = {"sha256": sha256_file(outside), "bytes": outside.stat().st_size}
    edit_manifest(bundle, point_outside)
    with pytest.raises(BundleIntegrityError, match="not a plain relative path inside"):
        load_v1(bundle)
    one_line_error(cli("verify", str(bundle)), "not a plain relative path inside")


def test_a_symlink_out_of_the_bundle_is_refused(bundle, tmp_path):
    sidecar = v1_entry(json.loads((bundle / "bundle.json").read_text()))["sidecar"]
    outside = tmp_path / "elsewhere.json"
    outside.write_bytes((bundle / sidecar).read_bytes())  # same bytes: its sha256 matches
    (bundle / sidecar).unlink()
    (bundle / sidecar).symlink_to(outside)
    with pytest.raises(BundleIntegrityError, match="leads outside"):
        load_v1(bundle)
    one_line_error(cli("verify", "--bundle", str(bundle)), "leads outside")


@pytest.mark.parametrize("voxels", [VOXELS + 1, 10 ** 9])
def test_declared_voxels_must_be_the_graphs(bundle, tmp_path, voxels):
    """A declared size that is not the graph's output width would shift rows (or allocate a file
    from a wrong size): refused when the model loads, before any output file exists."""
    sidecar = v1_entry(json.loads((bundle / "bundle.json").read_text()))["sidecar"]
    content = json.loads((bundle / sidecar).read_text())
    content["voxels"] = voxels
    replace_with_matching_hash(bundle, sidecar, json.dumps(content).encode())
    edit_manifest(bundle, lambda m: v1_entry(m).update(voxels=voxels))
    with pytest.raises(BundleIntegrityError, match=f"gives \\[{VOXELS}\\] values per image but the bundle declares "
                                                   f"\\[{voxels}\\]"):
        load_v1(bundle)
    images = tmp_path / "images"
    images.mkdir()
    np.save(images / "stack.npy", IMAGES)
    out = tmp_path / "out"
    one_line_error(cli("encode", str(images / "stack.npy"), "--bundle", str(bundle), "--model", "fwrf:roi=V1",
                       "--out", str(out)), "declares")
    assert not list(out.rglob("*.npy*"))


@pytest.mark.parametrize("value", [0, 1e9, "25", None])
def test_declared_sizes_must_be_positive_integers(bundle, value):
    edit_manifest(bundle, lambda m: v1_entry(m).update(voxels=value))
    with pytest.raises(BundleIntegrityError, match="voxels must be a positive integer"):
        NEST(bundle)
    one_line_error(cli("list", "--bundle", str(bundle)), "voxels must be a positive integer")


def test_a_block_of_the_wrong_shape_is_refused(nest, monkeypatch):
    """Even a graph that lies about its output shape cannot shift rows of the result."""
    model = nest.get_encoding_model("fmri-nsd-fwrf", subject=SUBJECT, selection={"roi": "V1"})
    real_run = type(model).run_batch
    monkeypatch.setattr(type(model), "run_batch", lambda self, *args: real_run(self, *args)[:, :-1])
    with pytest.raises(BundleIntegrityError, match=f"gave blocks of shape \\[\\(2, {VOXELS - 1}\\)\\]"):
        nest.encode(model, IMAGES, show_progress=False)


def test_damaged_files_with_a_matching_sha256(bundle):
    entry = v1_entry(json.loads((bundle / "bundle.json").read_text()))
    replace_with_matching_hash(bundle, entry["sidecar"], b"{ not json")
    with pytest.raises(BundleIntegrityError, match="is not valid JSON"):
        load_v1(bundle)
    one_line_error(cli("verify", str(bundle)), "is not valid JSON")


def test_unreadable_metadata_fails_verify(bundle):
    """verify reads every file the runtime reads, the metadata too (it used to pass)."""
    entry = v1_entry(json.loads((bundle / "bundle.json").read_text()))
    replace_with_matching_hash(bundle, entry["metadata"], b"PK\x03\x04 not a zip file")
    with pytest.raises(BundleIntegrityError, match="not a readable pickle-free npz"):
        NEST(bundle).get_metadata("fmri", "nsd", "fwrf", SUBJECT, "V1")
    one_line_error(cli("verify", str(bundle)), "metadata.npz", "not a readable pickle-free npz")


@pytest.mark.parametrize("change, words", [
    (lambda m: v1_entry(m).pop("parity"), "no parity record"),
    (lambda m: v1_entry(m).pop("graph"), "graph file is not listed"),
    (lambda m: m.pop("files"), "'files' must map"),
    (lambda m: m["models"].update({"fmri-nsd-alexnet": {"graphs": {}}}), "not one this nest_rt knows"),
    (lambda m: v1_entry(m)["parity"]["size_227"].update(min_correlation="high"), "no parity record"),
    (lambda m: v1_entry(m).update(self_contained={"graph": "elsewhere.onnx"}), "self-contained graph's files"),
])
def test_a_manifest_missing_what_the_runtime_reads(bundle, change, words):
    edit_manifest(bundle, change)
    with pytest.raises(BundleIntegrityError, match=words):
        NEST(bundle)
    for command in (["list", "--bundle", str(bundle)], ["info", "fwrf", "--bundle", str(bundle)],
                    ["verify", str(bundle)]):
        one_line_error(cli(*command), words)


def test_expect_sha256_anchors_the_bundle(bundle):
    trusted = sha256_file(bundle / "bundle.json")
    result = cli("verify", str(bundle), "--expect-sha256", trusted, "--device", "cpu")
    assert result.returncode == 0 and "as expected" in result.stdout, result.stderr
    # an edited file with its hash edited to match passes the sha256 list, not the anchor
    entry = v1_entry(json.loads((bundle / "bundle.json").read_text()))
    content = json.loads((bundle / entry["sidecar"]).read_text())
    replace_with_matching_hash(bundle, entry["sidecar"], json.dumps({**content, "note": "edited"}).encode())
    assert cli("verify", str(bundle)).returncode == 0
    one_line_error(cli("verify", str(bundle), "--expect-sha256", trusted), "not the expected", trusted)


def test_verify_reads_the_bundle_from_the_environment(bundle):
    result = subprocess.run([sys.executable, "-m", "nest_rt.cli", "verify"], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "NEST_RT_BUNDLE": str(bundle)})
    assert result.returncode == 0 and "verified: 2 models" in result.stdout, result.stderr
    one_line_error(subprocess.run([sys.executable, "-m", "nest_rt.cli", "verify"], capture_output=True, text=True,
                                  timeout=300, env={k: v for k, v in os.environ.items() if k != "NEST_RT_BUNDLE"}),
                   "--bundle is required")


def test_list_into_a_closed_pipe_is_quiet(bundle_dir):
    """nest-rt list | head -c 0 (a reader that has gone before the first line): no traceback."""
    shell = f"{sys.executable} -m nest_rt.cli list --bundle {bundle_dir} | head -c 0"
    result = subprocess.run(["bash", "-o", "pipefail", "-c", shell], capture_output=True, text=True, timeout=300)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
    assert result.returncode == 141  # 128 + SIGPIPE, as other Unix tools


DEEP = "[" * 100_000 + "]" * 100_000  # deeper than Python's recursion limit


def nest_deeply(bundle: Path) -> None:
    text = (bundle / "bundle.json").read_text()
    (bundle / "bundle.json").write_text(text[:-1] + ', "x": ' + DEEP + "}")


def nest_sidecar_deeply(bundle: Path) -> None:
    replace_with_matching_hash(bundle, v1_entry(json.loads((bundle / "bundle.json").read_text()))["sidecar"],
                               DEEP.encode())


def loop_sidecar(bundle: Path) -> None:
    sidecar = bundle / v1_entry(json.loads((bundle / "bundle.json").read_text()))["sidecar"]
    sidecar.unlink()
    sidecar.symlink_to(sidecar.name)


@pytest.mark.parametrize("damage, words, commands", [
    (nest_deeply, "nested too deeply", ["list", "info", "verify"]),
    (lambda b: edit_manifest(b, lambda m: m.update(x=json.loads("[" * 100 + "]" * 100))), "nested deeper than",
     ["list", "info"]),
    (lambda b: (b / "bundle.json").write_bytes(b"\xff\xfe{}"), "not valid JSON", ["list"]),
    (lambda b: edit_manifest(b, lambda m: m.update(source="x")), "source must be an object", ["list", "info"]),
    (lambda b: edit_manifest(b, lambda m: m["source"].update(nest_dir=3)), "source.nest_dir must be", ["info"]),
    (lambda b: edit_manifest(b, lambda m: m.update(tools=["torch"])), "tools must be an object", ["info"]),
    (lambda b: edit_manifest(b, lambda m: m.update(opset="18")), "opset must be an integer", ["info"]),
    (lambda b: edit_manifest(b, lambda m: v1_entry(m).update(
        parity={"size_227": {"min_correlation": 1.0, "relative_error": 0.0, "network": {}}})),
     "no parity record", ["list"]),
    (nest_sidecar_deeply, "nested too deeply", ["verify"]),
    (loop_sidecar, "cannot be resolved", ["verify"]),
])
def test_hand_damaged_bundles_are_one_line_errors(bundle, damage, words, commands):
    """Whatever the damage, BundleIntegrityError: never RecursionError, RuntimeError (a symlink
    loop) or an AttributeError once the manifest check has passed."""
    damage(bundle)
    with pytest.raises(BundleIntegrityError, match=words):
        load_v1(bundle)
    for command in commands:
        one_line_error(cli(command, *(["fwrf"] if command == "info" else []), "--bundle", str(bundle)), words)
