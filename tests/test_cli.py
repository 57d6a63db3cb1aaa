"""The nest-rt command line: the demo job, export, and one-line errors."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nest_rt.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


def test_demo_encodes_images_end_to_end(tmp_path):
    """The command line of the torch-free demo (the demo with export: test_newcomer.py)."""
    command = ("demo", "--out", str(tmp_path / "demo"), "--rois", "V1", "--images", "3", "--runtime-only")
    result = run_cli(*command)
    assert result.returncode == 0, result.stderr
    saved_file = (tmp_path / "demo" / "responses" / "modality-fmri" / "train_dataset-nsd" / "model-fwrf" /
                  "imageset-demo" / "synthetic_neural_responses_sub-01_roi-V1.npy")
    saved = np.load(saved_file)
    assert saved.shape == (3, 1350) and saved.dtype == np.float32 and np.isfinite(saved).all()
    assert saved.std(axis=0).min() > 0
    assert "fmri-nsd-fwrf_sub-01_roi-V1: (3, 1350) float32" in result.stdout
    again = run_cli(*command)
    assert again.returncode == 0, again.stderr  # a second demo replaces the first one's bundle and run


def test_synthetic_toolkit_then_export(tmp_path):
    toolkit_dir, bundle = tmp_path / "toolkit", tmp_path / "bundle"
    made = run_cli("synthetic-toolkit", "--out", str(toolkit_dir), "--subjects", "3",
                   "--rois", "RSC", "--voxels", "6", "--layout", "legacy")
    assert made.returncode == 0, made.stderr
    assert (toolkit_dir / "encoding_models/modality-fmri/train_dataset-nsd/model-fwrf/"
            "encoding_models_weights/weights_sub-03_roi-RSC.pt").is_file()
    exported = run_cli("export", "--nest-dir", str(toolkit_dir), "--out", str(bundle))
    assert exported.returncode == 0, exported.stderr
    from nest_rt import NEST
    nest = NEST(bundle)
    model = nest.get_encoding_model("fmri", "nsd", "fwrf", 3, "RSC")
    assert model.voxels == 6


def test_user_errors_are_one_line_without_traceback(tmp_path):
    for args in (["export", "--nest-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "b")],
                 ["synthetic-toolkit", "--out", str(tmp_path / "t"), "--rois", "V9"]):
        result = run_cli(*args)
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert "is not a directory" in run_cli("export", "--nest-dir", str(tmp_path / "missing"),
                                           "--out", str(tmp_path / "b")).stderr


def test_help_lists_the_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("demo", "synthetic-toolkit", "export"):
        assert command in result.stdout


def modules_imported(script: str, names: tuple[str, ...]) -> tuple[list[str], str]:
    """Run script in a new interpreter: which of names it imported, and what else it printed."""
    check = f"\nimport json, sys\nprint(json.dumps([name for name in {names!r} if name in sys.modules]))\n"
    result = subprocess.run([sys.executable, "-c", script + check], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    *printed, imported = result.stdout.splitlines()
    return json.loads(imported), "\n".join(printed)


@pytest.mark.parametrize("verb", ["", "encode", "list", "export", "synthetic-toolkit", "demo"])
def test_help_imports_nothing_heavy(verb):
    """nest-rt --help and nest-rt VERB --help load no numpy, onnxruntime, PIL or torch: each verb
    imports the runtime inside its run."""
    script = (
        "import runpy, sys\n"
        f"sys.argv = ['nest-rt', *{[verb] if verb else []!r}, '--help']\n"
        "try:\n"
        "    runpy.run_module('nest_rt.cli', run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n")
    heavy, printed = modules_imported(script, ("numpy", "onnxruntime", "PIL", "tqdm", "torch"))
    assert heavy == [] and "usage: nest-rt" in printed


def test_runtime_never_imports_torch(bundle_dir):
    """In the export venv torch is installed; the runtime must still not import it."""
    script = (
        "import numpy as np\n"
        "from nest_rt import NEST\n"
        f"nest = NEST({str(bundle_dir)!r})\n"
        "model = nest.get_encoding_model('fmri', 'nsd', 'fwrf', 1, 'lateral')\n"
        "nest.encode(model, np.zeros((2, 3, 64, 64), np.uint8), show_progress=False)\n")
    assert modules_imported(script, ("torch", "torchvision", "onnx", "sklearn"))[0] == []


def test_corrupt_toolkit_file_is_a_one_line_error(tmp_path):
    toolkit_dir = tmp_path / "toolkit"
    assert run_cli("synthetic-toolkit", "--out", str(toolkit_dir), "--subjects", "1", "--rois", "V1",
                   "--voxels", "4").returncode == 0
    weights = next(toolkit_dir.rglob("weights_sub-01_roi-V1.pt"))
    weights.write_bytes(weights.read_bytes()[:3000])
    result = run_cli("export", "--nest-dir", str(toolkit_dir), "--out", str(tmp_path / "b"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "weights_sub-01_roi-V1.pt" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()
