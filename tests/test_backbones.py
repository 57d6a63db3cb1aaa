"""The backbone registry (export/backbones/): one file per backbone, each registered by name and
checked against models_manifest.json; ``--weights NAME=PATH`` and ``export_bundle(weights=...)``
look backbones up there, and the older ``--vit-weights``/``--alexnet-weights`` still work."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from nest_rt import catalog, cli
from nest_rt_export import backbones, exporter
from nest_rt_export.errors import ExportError
from nest_rt_export.parity import END_TO_END_TOLERANCE


def test_every_backbone_of_the_manifest_has_its_file_and_no_other():
    listed = catalog.backbones()
    assert sorted(backbones.names()) == sorted(listed)
    for name in backbones.names():
        backbone = backbones.get(name)
        assert backbone.name == name and backbone.features == listed[name].features
        assert END_TO_END_TOLERANCE[name] is backbone.end_to_end_tolerance
        assert set(backbone.end_to_end_tolerance) == {"native", "resized"}
    assert backbones.get("alexnet_untrained").takes_weights is False
    with pytest.raises(ExportError, match="no exporter for backbone 'resnet'"):
        backbones.get("resnet")


def test_the_registry_refuses_a_backbone_the_manifest_does_not_describe():
    vit = backbones.get("vit_b_32")
    with pytest.raises(ValueError, match="registered twice"):
        backbones.register(vit)
    with pytest.raises(ValueError, match="not in models_manifest.json"):
        backbones.register(dataclasses.replace(vit, name="resnet"))
    with pytest.raises(ValueError, match="its nodes give 38400 features, models_manifest.json says 460800"):
        backbones.register(dataclasses.replace(vit, nodes=vit.nodes[:1]))
    assert backbones.get("vit_b_32") is vit


def test_importing_the_registry_needs_no_torch():
    """The torch-free tests read the tolerances through parity.py, which reads the registry."""
    code = ("import sys; import nest_rt_export.parity, nest_rt_export.backbones; "
            "print(sorted(m for m in ('torch', 'torchvision', 'onnx') if m in sys.modules))")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]"


@pytest.fixture
def export_calls(monkeypatch) -> list[dict]:
    calls = []
    monkeypatch.setattr(exporter, "export_bundle", lambda *args, **kwargs: calls.append(kwargs))
    return calls


def test_weights_option_and_its_aliases_reach_the_exporter(export_calls, tmp_path):
    assert cli.main(["export", "--nest-dir", str(tmp_path), "--out", str(tmp_path / "b"),
                     "--weights", "alexnet=a.pth", "--vit-weights", "v.pth"]) == 0
    assert export_calls[-1]["weights"] == {"alexnet": Path("a.pth"), "vit_b_32": Path("v.pth")}
    assert cli.main(["export", "--nest-dir", str(tmp_path), "--out", str(tmp_path / "b"),
                     "--alexnet-weights", "a.pth"]) == 0
    assert export_calls[-1]["weights"] == {"alexnet": Path("a.pth")}
    assert cli.main(["export", "--nest-dir", str(tmp_path), "--out", str(tmp_path / "b")]) == 0
    assert export_calls[-1]["weights"] == {}


def test_malformed_weights_are_refused_by_the_cli(export_calls, tmp_path, capsys):
    command = ["export", "--nest-dir", str(tmp_path), "--out", str(tmp_path / "b")]
    with pytest.raises(SystemExit) as stopped:
        cli.main([*command, "--weights", "vit_b_32"])
    assert stopped.value.code == 2
    assert "argument --weights: expected NAME=PATH, got 'vit_b_32'" in capsys.readouterr().err
    assert cli.main([*command, "--weights", "alexnet=a.pth", "--alexnet-weights", "b.pth"]) == 2
    error = capsys.readouterr().err
    assert error == "nest-rt export: --weights: two files for the alexnet backbone: a.pth and b.pth\n"
    assert not export_calls


@pytest.mark.parametrize("weights, words", [
    ({"resnet": "r.pth"}, "no backbone 'resnet'; known: alexnet, alexnet_untrained, vit_b_32"),
    ({"alexnet_untrained": "u.pth"}, "untrained AlexNet backbone takes no weights file"),
])
def test_export_refuses_weights_no_backbone_takes(tmp_path, weights, words):
    with pytest.raises(ExportError, match=words):
        exporter.export_bundle(tmp_path / "missing", tmp_path / "bundle", weights=weights)
    assert not (tmp_path / "bundle").exists()


def test_export_takes_the_older_keywords_and_refuses_two_files_for_one_backbone(tmp_path):
    (tmp_path / "toolkit").mkdir()
    with pytest.raises(ExportError, match="two weights files for the vit_b_32 backbone"):
        exporter.export_bundle(tmp_path / "toolkit", tmp_path / "bundle", weights={"vit_b_32": "a.pth"},
                               vit_weights="b.pth")
    # the same file given both ways is one request: the export goes on (and stops at the empty toolkit)
    with pytest.raises(ExportError, match="holds no NEST models"):
        exporter.export_bundle(tmp_path / "toolkit", tmp_path / "bundle", weights={"alexnet": "a.pth"},
                               alexnet_weights="a.pth", log=lambda _: None)


def test_demo_passes_its_weights_to_the_export(monkeypatch, tmp_path):
    from nest_rt import demo
    calls = []
    monkeypatch.setattr(demo, "run_demo", lambda *args, **kwargs: calls.append(kwargs))
    assert cli.main(["demo", "--nest-dir", str(tmp_path), "--weights", "alexnet=a.pth", "--vit-weights", "v.pth"]) == 0
    assert calls[-1]["weights"] == {"alexnet": Path("a.pth"), "vit_b_32": Path("v.pth")}
