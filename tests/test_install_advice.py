"""What nest_rt tells a user to run: the CUDA advice and the demo's next commands."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from nest_rt import demo, sessions


def test_cuda_advice_swaps_the_cpu_wheel_for_the_gpu_one(monkeypatch):
    """Both wheels provide the onnxruntime module: installing the GPU one beside the CPU one
    is not enough, the CPU one must be uninstalled first."""
    import onnxruntime
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ValueError) as info:
        sessions.resolve_device("cuda")
    message = str(info.value)
    assert "pip uninstall -y onnxruntime && pip install --force-reinstall 'onnxruntime-gpu" in message


def test_demo_commands_use_the_nest_rt_beside_this_python(tmp_path, monkeypatch):
    bin_dir = tmp_path / "venv with space" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").touch()
    (bin_dir / "nest-rt").touch()
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    commands = demo.next_commands(Path("out/bundle"), Path("out/images"), Path("out/responses"),
                                  ["fwrf:subjects=1:roi=V1"])
    script = f"'{bin_dir / 'nest-rt'}'"  # quoted: the path has a space
    assert commands == [f"{script} list --bundle out/bundle",
                        f"{script} plot out/responses --images 0 1",
                        f"{script} encode out/images --bundle out/bundle --model fwrf:subjects=1:roi=V1 "
                        f"--out out/my_responses"]


def test_demo_commands_without_a_nest_rt_script_use_this_python(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python3"))
    assert demo.nest_rt_command() == f"{tmp_path / 'python3'} -m nest_rt.cli"
