"""nest_rt.plots: PNGs of a run directory, built here as `nest-rt encode` writes it (RUN_FORMAT.md)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nest_rt import NESTError, errors
from nest_rt.plots import plot_run

ROWS = 6
EEG = "eeg-things_eeg_2-vit_b_32_sub-01"
FWRF = "fmri-nsd-fwrf_sub-01_roi-V1"
FSAVERAGE = "fmri-nsd_fsaverage-vit_b_32_sub-01_roi-V1v"


def _output(name, model_id, selection, arrays, axes):
    return {"name": name, "model_id": model_id, "subject": 1, "selection": selection,
            "arrays": arrays, "axes": axes, "metadata": None, "h5": None}


def write_run(out, rows=ROWS, status="complete", inputs=None):
    """A run directory with an EEG, an fwRF and an fsaverage output of ``rows`` images."""
    generator = np.random.default_rng(0)
    folder = out / "modality-x" / "model-y"
    folder.mkdir(parents=True)
    arrays = {"eeg": (rows, 4, 5, 140), "fwrf": (rows, 30), "lh": (rows, 20), "rh": (rows, 25)}
    spec = {}
    for key, shape in arrays.items():
        np.save(folder / f"{key}.npy", generator.standard_normal(shape).astype(np.float32))
        spec[key] = {"file": f"modality-x/model-y/{key}.npy", "shape": list(shape), "dtype": "float32"}
    if inputs is None:
        items = []
        for row in range(rows):
            path = out / f"image{row}.png"
            Image.fromarray(generator.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
            items.append(str(path))
        inputs = {"kind": "files", "total": rows, "count": rows, "items": items}
    # rows 0..rows-1 as one chunk: the whole run, or the first of two shards of a larger one
    shard = {"index": 0, "count": 1 if inputs["total"] == rows else 2, "start": 0, "stop": rows}
    run = {
        "format": "nest_rt.run/1", "status": status, "imageset": "test", "inputs": inputs,
        "shard": shard, "chunk_size": rows,
        "outputs": [
            _output(EEG, "eeg-things_eeg_2-vit_b_32", {}, {"responses": spec["eeg"]},
                    {"repetitions": 4, "channels": ["Fp1", "Fz", "Cz", "Pz", "Oz"],
                     "times": list(np.linspace(-0.2, 0.8, 140))}),
            _output(FWRF, "fmri-nsd-fwrf", {"roi": "V1"}, {"responses": spec["fwrf"]}, {"voxels": 30}),
            _output(FSAVERAGE, "fmri-nsd_fsaverage-vit_b_32", {"roi": "V1v"},
                    {"lh": spec["lh"], "rh": spec["rh"]}, {"vertices": {"lh": 20, "rh": 25}}),
        ],
    }
    run["identity"] = {"total": inputs["total"], "chunk_size": rows, "shard": shard,
                       "outputs": [[output["name"], output["selection"]] for output in run["outputs"]]}
    (out / "run.json").write_text(json.dumps(run))
    return out


@pytest.fixture
def run_dir(tmp_path):
    return write_run(tmp_path / "run")


def assert_png(path):
    assert path.is_file()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert 600 <= image.width <= 3000 and 300 <= image.height <= 3000
        assert np.asarray(image.convert("L")).std() > 0


def test_one_png_per_output(run_dir, tmp_path):
    pytest.importorskip("matplotlib")
    written = plot_run(run_dir, tmp_path / "plots")
    assert [p.name for p in written] == [f"{EEG}.png", f"{FWRF}.png", f"{FSAVERAGE}.png"]
    for path in written:
        assert_png(path)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(p.name for p in written)


def test_thumbnails_beside_chosen_images(run_dir, tmp_path):
    pytest.importorskip("matplotlib")
    written = plot_run(run_dir, tmp_path / "plots", outputs=[FSAVERAGE, EEG], images=[0, 1, 2])
    assert [p.name for p in written] == [f"{FSAVERAGE}.png", f"{FSAVERAGE}_images.png",
                                         f"{EEG}.png", f"{EEG}_images.png"]
    for path in written:
        assert_png(path)


def test_an_image_file_gone_since_the_run_still_plots(run_dir, tmp_path):
    pytest.importorskip("matplotlib")
    (run_dir / "image1.png").unlink()
    written = plot_run(run_dir, tmp_path / "plots", outputs=[EEG], images=[1, 2])
    assert_png(written[1])


def test_a_failed_save_leaves_no_file(run_dir, tmp_path, monkeypatch):
    matplotlib_figure = pytest.importorskip("matplotlib.figure")

    def crash_halfway(self, path, **kwargs):
        Path(path).write_bytes(b"\x89PNG half")
        raise OSError("disk full")
    monkeypatch.setattr(matplotlib_figure.Figure, "savefig", crash_halfway)
    with pytest.raises(OSError, match="disk full"):
        plot_run(run_dir, tmp_path / "plots")
    assert list((tmp_path / "plots").iterdir()) == []


def test_thumbnails_from_an_input_array(tmp_path):
    pytest.importorskip("matplotlib")
    pixels = np.random.default_rng(1).integers(0, 256, (ROWS + 2, 3, 24, 24), dtype=np.uint8)
    np.save(tmp_path / "x.npy", pixels)
    inputs = {"kind": "array", "total": ROWS + 2, "count": ROWS,
              "array": {"path": str(tmp_path / "x.npy"), "dataset": None, "shape": list(pixels.shape),
                        "layout": "NCHW"}}
    run_dir = write_run(tmp_path / "run", inputs=inputs)
    written = plot_run(run_dir, tmp_path / "plots", outputs=[FWRF], images=[5])
    assert [p.name for p in written] == [f"{FWRF}.png", f"{FWRF}_images.png"]
    assert_png(written[1])


def test_only_max_images_rows_are_read(run_dir, tmp_path, monkeypatch):
    """Every response file is opened as a memory map and only the first max_images rows leave it."""
    pytest.importorskip("matplotlib")
    real_load = np.load
    rows_read = []

    class RowRecorder:  # no __array__: reading the whole map by accident fails loudly
        def __init__(self, array):
            self._array, self.shape, self.ndim = array, array.shape, array.ndim

        def __getitem__(self, key):
            part = self._array[key]
            rows_read.append(part.shape[0])
            return part

    def spy(path, *args, **kwargs):
        assert kwargs.get("mmap_mode") == "r", path
        return RowRecorder(real_load(path, *args, **kwargs))
    monkeypatch.setattr(np, "load", spy)
    plot_run(run_dir, tmp_path / "plots", max_images=4)
    assert rows_read == [4, 4, 4, 4]  # eeg, fwrf, lh, rh


def test_errors_name_the_argument(run_dir, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "plots"
    cases = [
        ({"outputs": ["unknown"]}, ["outputs", "'unknown'", FWRF, EEG, FSAVERAGE]),
        ({"images": [0, ROWS]}, ["images", str(ROWS), f"0..{ROWS - 1}"]),
        ({"images": [-1]}, ["images", "-1"]),
        ({"images": [0, 1, 2], "max_images": 2}, ["images", "max_images"]),
        ({"max_images": 0}, ["max_images", "positive"]),
    ]
    for kwargs, words in cases:
        with pytest.raises(errors.InvalidParameterError) as info:
            plot_run(run_dir, out, **kwargs)
        assert all(word in str(info.value) for word in words), (kwargs, str(info.value))
        assert "\n" not in str(info.value)
    assert not out.exists() or not list(out.iterdir())


def test_unfinished_or_missing_run_is_refused(tmp_path):
    pytest.importorskip("matplotlib")
    running = write_run(tmp_path / "running", status="running")
    with pytest.raises(errors.InvalidParameterError, match="run_dir: .*'running'.*resume"):
        plot_run(running, tmp_path / "plots")
    with pytest.raises(errors.InvalidParameterError, match="run_dir: .*run.json does not exist"):
        plot_run(tmp_path / "nothing", tmp_path / "plots")
    (running / "run.json").write_text(json.dumps({"format": "other/1", "status": "complete"}))
    with pytest.raises(errors.InvalidParameterError, match="nest_rt.run/1"):
        plot_run(running, tmp_path / "plots")


def test_missing_matplotlib_says_what_to_install(run_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'nest-rt\[plot\]'") as info:
        plot_run(run_dir, tmp_path / "plots")
    assert isinstance(info.value, NESTError)
