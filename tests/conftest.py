"""Shared fixtures: one synthetic toolkit with all 23 fwRF ROIs, exported once per session.

Voxel counts are small (25 per ROI, so split ROIs are 13 + 12 voxels in two real checkpoints)
to keep the suite fast; the code paths are those of full-size toolkits.
"""
from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest

# A suite started with SIGINT ignored (`nohup bash tests/run.sh &` from a script) would pass that on:
# Python keeps an inherited SIG_IGN, and so does nest_rt.interrupts, on purpose. The interrupt tests
# need Ctrl-C's usual disposition here and in the processes they start: a Python handler becomes
# SIG_DFL in a child at exec, where an ignored signal would stay ignored.
signal.signal(signal.SIGINT, signal.default_int_handler)

torch = pytest.importorskip("torch", reason="these tests need the export extra")

from nest_rt import NEST  # noqa: E402
from nest_rt_export import exporter, synthetic, synthetic_vit, toolkit  # noqa: E402
from nest_rt_export.fwrf_torch import FwrfReference  # noqa: E402

VOXELS = 25
SUBJECT = 1


def quiet(_message: str) -> None:
    pass


def edit_json(path: Path, change) -> None:
    """Rewrite a JSON file after ``change(content)`` edited it in place (a hand-edited manifest
    or run record)."""
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content))


def write_png_folder(folder: Path, images) -> np.ndarray:
    """``images`` [N, 3, S, S] as image0.png, image1.png, ... in a new ``folder``; returns what
    reading them back gives (the stimulus an encode run over the folder sees)."""
    from PIL import Image
    folder.mkdir()
    for index, image in enumerate(images):
        Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"image{index}.png")
    return np.stack([np.asarray(Image.open(folder / f"image{i}.png")).transpose(2, 0, 1) for i in range(len(images))])


def count_backbone_calls(nest, monkeypatch, model_id: str = "eeg-things_eeg_2-vit_b_32") -> list[int]:
    """The batch sizes of every call, from now on (on the CPU), of ``nest``'s backbone that
    ``model_id`` runs on (the ViT-B/32 by default)."""
    backbone = nest._backbone(model_id)
    session, calls = backbone._sessions.get("cpu"), []

    class CountingSession:
        def run(self, outputs, feeds):
            calls.append(len(feeds["images"]))
            return session.run(outputs, feeds)
    monkeypatch.setitem(backbone._sessions._by_device, "cpu", CountingSession())
    return calls


def assert_nest_error(call, kind: type, words: list[str]) -> None:
    """call() raises ``kind`` (a built-in base) that is also a NESTError and names every word."""
    from nest_rt import NESTError
    with pytest.raises(kind) as info:
        call()
    assert isinstance(info.value, NESTError)
    for word in words:
        assert word in str(info.value)


@pytest.fixture(scope="session")
def toolkit_dir(tmp_path_factory) -> Path:
    return synthetic.write_toolkit(tmp_path_factory.mktemp("toolkit"), subjects=[SUBJECT],
                                   voxels=VOXELS, seed=3)


@pytest.fixture(scope="session")
def bundle_dir(toolkit_dir, tmp_path_factory) -> Path:
    return exporter.export_bundle(toolkit_dir, tmp_path_factory.mktemp("bundles") / "bundle", log=quiet)


@pytest.fixture(scope="session")
def nest(bundle_dir) -> NEST:
    return NEST(bundle_dir)


@pytest.fixture(scope="session")
def reference(toolkit_dir):
    """reference(roi) -> the torch reference model of that ROI (cached)."""
    cache: dict = {}

    def get(roi: str, nest_dir: Path = toolkit_dir) -> FwrfReference:
        key = (str(nest_dir), roi)
        if key not in cache:
            files = toolkit.fwrf_files(nest_dir, SUBJECT, roi)
            cache[key] = FwrfReference.from_checkpoints(
                [toolkit.load_checkpoint(p) for p in files["weights"]], SUBJECT)
        return cache[key]
    return get


@pytest.fixture(scope="session")
def vit_toolkit(tmp_path_factory) -> Path:
    """EEG subjects 1-2 and fsaverage subject 1 with 12 PCA components (instead of 250), and
    fwRF subject 1 (V1 and lateral, 20 voxels), so that one bundle holds all three families."""
    nest_dir = synthetic.write_toolkit(tmp_path_factory.mktemp("vit_toolkit"), subjects=[SUBJECT],
                                       rois=["V1", "lateral"], voxels=20, seed=4)
    return synthetic_vit.write_vit_toolkit(nest_dir, eeg_subjects=[1, 2], fsaverage_subjects=[1],
                                           components=12, seed=4)


@pytest.fixture(scope="session")
def vit_bundle(vit_toolkit, tmp_path_factory) -> Path:
    """The real-size ViT-B/32 backbone (random weights), exported once per session."""
    return exporter.export_bundle(vit_toolkit, tmp_path_factory.mktemp("vit_bundle") / "bundle",
                                  vit_weights=vit_toolkit / synthetic_vit.VIT_WEIGHTS_NAME,
                                  precisions=("int8", "fp16"), log=quiet)


@pytest.fixture(scope="session")
def variants_toolkit(tmp_path_factory) -> Path:
    """For the bundle variants of embedders: fwRF subject 1 (V1, 20 voxels), EEG subject 1 in
    current BERG's format (one PCA per repetition: a head with P = 4 blocks) and fsaverage
    subject 1 (P = 1), on one ViT-B/32 (the same seed writes the same weights)."""
    from nest_rt_export import synthetic_berg
    root = synthetic.write_toolkit(tmp_path_factory.mktemp("variants_toolkit"), subjects=[SUBJECT], rois=["V1"],
                                   voxels=20, seed=6)
    synthetic_berg.write_berg_toolkit(root, eeg_subjects=[1], eeg_pca_form="dict", components=8, seed=6)
    return synthetic_vit.write_vit_toolkit(root, fsaverage_subjects=[1], components=8, seed=6)


@pytest.fixture(scope="session")
def variants_bundle(variants_toolkit, tmp_path_factory) -> Path:
    """``--portable --self-contained`` (and the int8 backbone, which must stay portable too)."""
    return exporter.export_bundle(variants_toolkit, tmp_path_factory.mktemp("variants_bundle") / "bundle",
                                  vit_weights=variants_toolkit / synthetic_vit.VIT_WEIGHTS_NAME, precisions=("int8",),
                                  portable=True, self_contained=True, log=quiet)
