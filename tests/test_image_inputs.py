"""How images arrive (issue 21): only regular files are opened (a FIFO never blocks), every bad
file is one line or a listed rejection, one orientation rule for paths, folders and PIL images,
and nothing in a folder is left out without being listed."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from nest_rt import images as image_module
from nest_rt.errors import StimulusError
from nest_rt.image_files import load_image
from nest_rt.runs import RunInputs, encode_run

from conftest import SUBJECT, quiet

# A bound on each command, so that a hang fails the test instead of stalling the suite (no timing is
# asserted: a fixed nest-rt answers in seconds).
HANG = 120


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nest_rt.cli", *args], capture_output=True, text=True, timeout=HANG)


def save_photo(path: Path, size=(32, 32), seed=0) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def photo_folder(folder: Path, count: int = 2) -> Path:
    folder.mkdir()
    for index in range(count):
        save_photo(folder / f"{index}.png", seed=index)
    return folder


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


@pytest.fixture
def v1(nest):
    return nest.get_encoding_model("fmri-nsd-fwrf", subject=SUBJECT, selection={"roi": "V1"})


# -- item 3: FIFOs --------------------------------------------------------------------------------
def test_a_fifo_in_a_folder_is_a_listed_rejection_and_never_blocks(bundle_dir, tmp_path):
    folder = photo_folder(tmp_path / "photos")
    os.mkfifo(folder / "pipe.png")
    command = ["encode", str(folder), "--bundle", str(bundle_dir), "--model", "fwrf:roi=V1", "--no-progress"]
    stopped = cli(*command, "--out", str(tmp_path / "a"))
    assert stopped.returncode == 2 and "Traceback" not in stopped.stderr
    assert "pipe.png: a FIFO (named pipe), not a regular file" in stopped.stderr
    skipped = cli(*command, "--out", str(tmp_path / "b"), "--skip-bad-images")
    assert skipped.returncode == 0, skipped.stderr
    record = json.loads((tmp_path / "b" / "run.json").read_text())
    assert [item["path"] for item in record["inputs"]["rejected"]] == [str(folder / "pipe.png")]
    assert len(record["inputs"]["items"]) == 2


def test_a_fifo_named_is_refused_in_one_line(bundle_dir, nest, v1, tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    result = cli("encode", str(tmp_path / "pipe.png"), "--bundle", str(bundle_dir), "--model", "fwrf:roi=V1",
                 "--out", str(tmp_path / "o"), "--skip-bad-images")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "pipe.png: a FIFO (named pipe), not a regular file" in result.stderr
    assert not (tmp_path / "o").exists()
    with pytest.raises(FileNotFoundError, match=r"images\[0\]: .*pipe.png is a FIFO"):
        nest.encode(v1, [str(tmp_path / "pipe.png")])
    os.mkfifo(tmp_path / "pipe.npy")
    with pytest.raises(StimulusError, match="pipe.npy is a FIFO"):
        RunInputs([str(tmp_path / "pipe.npy")], report=quiet)


def test_a_fifo_swapped_in_after_the_check_does_not_block(tmp_path, monkeypatch):
    """The status says regular file (as it was when checked); the file opened is a FIFO."""
    os.mkfifo(tmp_path / "pipe.png")
    regular, real_stat = os.stat(save_photo(tmp_path / "a.png")), os.stat
    monkeypatch.setattr(os, "stat", lambda path, **options: regular if str(path).endswith("pipe.png")
                        else real_stat(path, **options))
    with pytest.raises(StimulusError, match="pipe.png is a FIFO"):
        image_module.open_regular_file(str(tmp_path / "pipe.png"), "images")


def test_plot_never_blocks_on_an_item_replaced_by_a_fifo(bundle_dir, tmp_path):
    pytest.importorskip("matplotlib")
    folder = photo_folder(tmp_path / "photos")
    encode_run(bundle_dir, RunInputs([str(folder)], report=quiet), ["fwrf:roi=V1"], tmp_path / "run",
               imageset="set", show_progress=False, log=quiet)
    (folder / "0.png").unlink()
    os.mkfifo(folder / "0.png")
    result = cli("plot", str(tmp_path / "run"), "--images", "0", "1")
    assert result.returncode == 0, result.stderr


# -- item 5: one line or a listed rejection, never a traceback ------------------------------------
def test_a_symlink_loop_in_a_folder_is_a_listed_rejection(tmp_path):
    folder = photo_folder(tmp_path / "photos")
    os.symlink("x.png", folder / "x.png")
    reasons = []
    with pytest.raises(StimulusError, match="1 image\\(s\\) cannot be encoded"):
        RunInputs([str(folder)], report=reasons.append)
    assert reasons == [f"rejected: {folder / 'x.png'}: cannot open it: a loop of symbolic links"]
    inputs = RunInputs([str(folder)], skip_bad=True, report=quiet)
    assert inputs.images.paths == [str(folder / "0.png"), str(folder / "1.png")]
    with pytest.raises(StimulusError, match="x.png: a loop of symbolic links"):
        RunInputs([str(folder / "x.png")], report=quiet)


def huge_png(path: Path, side: int = 14000) -> Path:
    """A PNG that declares side x side pixels in a few bytes (its pixels are never read)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b""))
                     + png_chunk(b"IEND", b""))
    return path


def test_an_image_over_the_pixel_limit_says_how_to_raise_it(nest, v1, tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # put back after the test
    folder = photo_folder(tmp_path / "photos")
    huge_png(folder / "huge.png")
    inputs = RunInputs([str(folder)], skip_bad=True, report=quiet)
    (rejected,) = inputs.images.rejected
    assert rejected["path"] == str(folder / "huge.png")
    assert "196,000,000 pixels" in rejected["reason"] and "NEST_RT_MAX_IMAGE_PIXELS" in rejected["reason"]
    with pytest.raises(StimulusError, match=r"images\[0\]: .*huge.png is too large.*NEST_RT_MAX_IMAGE_PIXELS"):
        nest.encode(v1, str(folder / "huge.png"))
    monkeypatch.setenv("NEST_RT_MAX_IMAGE_PIXELS", "1000")  # the 32 x 32 photos are over it
    with pytest.raises(StimulusError, match="images over 1,000 pixels are refused"):
        nest.encode(v1, str(folder / "0.png"))
    monkeypatch.setenv("NEST_RT_MAX_IMAGE_PIXELS", "2000")
    assert nest.encode(v1, str(folder / "0.png"), show_progress=False).shape[0] == 1
    monkeypatch.setenv("NEST_RT_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValueError, match="NEST_RT_MAX_IMAGE_PIXELS must be a number of pixels"):
        nest.encode(v1, str(folder / "0.png"))


def test_ray_workers_read_images_under_the_driver_s_pixel_limit(tmp_path, monkeypatch):
    import pickle
    folder = photo_folder(tmp_path / "photos")
    monkeypatch.setenv("NEST_RT_MAX_IMAGE_PIXELS", "250000000")
    sent = pickle.dumps(RunInputs([str(folder)], report=quiet))
    monkeypatch.delenv("NEST_RT_MAX_IMAGE_PIXELS")  # a worker started without it
    pickle.loads(sent)
    assert os.environ["NEST_RT_MAX_IMAGE_PIXELS"] == "250000000"


@pytest.mark.parametrize("name, content, words", [
    ("empty.npy", b"", ["empty.npy is not a plain numpy array file"]),
    ("text.npy", b"not an array", ["text.npy is not a plain numpy array file"]),
    ("empty.h5", b"", ["empty.h5 is not an HDF5 file"]),
    ("garbage.h5", b"garbage" * 100, ["garbage.h5 is not an HDF5 file"]),
])
def test_a_damaged_array_file_is_refused_in_one_line(tmp_path, name, content, words):
    if name.endswith(".h5"):
        pytest.importorskip("h5py")
    (tmp_path / name).write_bytes(content)
    for skip_bad in (False, True):
        with pytest.raises(StimulusError) as info:
            RunInputs([str(tmp_path / name)], skip_bad=skip_bad, report=quiet)
        assert all(word in str(info.value) for word in words) and "\n" not in str(info.value)


def test_an_h5_dataset_naming_a_group_is_refused(tmp_path):
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "images.h5", "w") as file:
        file.create_group("group").create_dataset("inside", data=np.zeros((2, 8, 8, 3), np.uint8))
        file.create_dataset("images", data=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(StimulusError, match="--h5-dataset 'group' is a group in .*images.h5, not a dataset"):
        RunInputs([str(tmp_path / "images.h5")], h5_dataset="group", report=quiet)
    assert RunInputs([str(tmp_path / "images.h5")], h5_dataset="images", report=quiet).total == 2


def test_a_premultiplied_alpha_pil_image_is_converted(nest, v1):
    grey = np.random.default_rng(3).integers(0, 256, (16, 16), dtype=np.uint8)
    premultiplied = Image.merge("La", [Image.fromarray(grey), Image.new("L", (16, 16), 255)])
    expected = nest.encode(v1, np.stack([grey] * 3)[None], show_progress=False)
    np.testing.assert_array_equal(nest.encode(v1, premultiplied, show_progress=False), expected)


# -- item 9: one orientation rule for every way an image arrives ----------------------------------
def exif_chunk(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    payload = exif.tobytes()
    return png_chunk(b"eXIf", payload[6:] if payload.startswith(b"Exif\x00\x00") else payload)


def png_with_late_exif(path: Path, orientation: int = 6, early: int | None = None) -> Path:
    """A PNG whose eXIf chunk follows its pixels (IDAT), as some tools write them; ``early``: the
    orientation of a second eXIf chunk before them."""
    save_photo(path, size=(40, 32), seed=9)
    data = path.read_bytes()
    iend = data.rindex(b"IEND") - 4
    data = data[:iend] + exif_chunk(orientation) + data[iend:]
    if early is not None:
        after_header = data.index(b"IHDR") + 4 + 13 + 4
        data = data[:after_header] + exif_chunk(early) + data[after_header:]
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("early", [None, 3])
def test_a_png_exif_after_the_pixels_counts_for_paths_folders_and_pil_images(nest, v1, tmp_path, early):
    """One rule: the EXIF orientation wherever the file stores it; of two eXIf chunks, the last
    (as Pillow keeps once the pixels are loaded)."""
    path = png_with_late_exif(tmp_path / "late.png", early=early)
    with Image.open(path) as image:
        assert image.info.get("exif") is None or early is not None  # Pillow has not seen the late one yet
        image.load()
        upright = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))  # what a viewer shows
    assert upright.shape[:2] == (40, 32)
    expected = upright[4:36].transpose(2, 0, 1)  # the central square
    np.testing.assert_array_equal(load_image(str(path)), expected)
    inputs = RunInputs([str(tmp_path)], center_crop=True, report=quiet)
    assert inputs.images.oriented == [{"path": str(path), "orientation": 6}]
    assert inputs.images.cropped == [{"path": str(path), "size": [32, 40]}]  # the upright size
    reference = nest.encode(v1, expected[None], show_progress=False)
    by_path = nest.encode(v1, str(path), center_crop=True, show_progress=False)
    with Image.open(path) as image:
        unloaded = nest.encode(v1, image, center_crop=True, show_progress=False)
    with Image.open(path) as image:
        image.load()
        loaded = nest.encode(v1, image, center_crop=True, show_progress=False)
    for got in (by_path, unloaded, loaded):
        np.testing.assert_array_equal(got, reference)


# -- item 10: nothing left out without being listed -----------------------------------------------
def test_files_that_are_not_images_are_listed(bundle_dir, tmp_path):
    folder = photo_folder(tmp_path / "photos")
    for name in ("notes.txt", "drawing.svg", "phone.heic", "README"):
        (folder / name).write_text("not an image")
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", folder / "linked")
    said = []
    inputs = RunInputs([str(folder)], report=said.append)
    expected = [{"path": str(folder / "README"), "reason": "not an image file (no suffix)"},
                {"path": str(folder / "drawing.svg"), "reason": "not an image file (.svg suffix)"},
                {"path": str(folder / "linked"), "reason": "a link to a folder, not followed"},
                {"path": str(folder / "notes.txt"), "reason": "not an image file (.txt suffix)"},
                {"path": str(folder / "phone.heic"), "reason": "not an image file (.heic suffix)"}]
    assert inputs.images.not_images == expected
    assert said == [f"not read: {item['path']}: {item['reason']}" for item in expected]
    record = encode_run(bundle_dir, inputs, ["fwrf:roi=V1"], tmp_path / "run", imageset="set",
                        show_progress=False, log=quiet)
    assert record["inputs"]["not_images"] == expected
    assert json.loads((tmp_path / "run" / "run.json").read_text())["inputs"]["not_images"] == expected


def test_a_file_name_that_is_not_utf8_is_named_and_can_be_skipped(bundle_dir, tmp_path):
    folder = photo_folder(tmp_path / "photos")
    try:
        save_photo(Path(os.fsdecode(bytes(folder) + b"/caf\xe9.png")))
    except (OSError, UnicodeError):
        pytest.skip("this file system takes only UTF-8 names")
    shown = f"{folder}/caf\\xe9.png"
    said = []
    with pytest.raises(StimulusError, match="1 image\\(s\\) cannot be encoded"):
        RunInputs([str(folder)], report=said.append)
    assert said == [f"rejected: {shown}: its name is not valid UTF-8, which run.json (JSON) cannot record; rename it"]
    inputs = RunInputs([str(folder)], skip_bad=True, report=quiet)
    encode_run(bundle_dir, inputs, ["fwrf:roi=V1"], tmp_path / "run", imageset="set", show_progress=False, log=quiet)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert [item["path"] for item in record["inputs"]["rejected"]] == [shown]
    assert len(record["inputs"]["items"]) == 2


def test_an_image_replaced_during_the_run_is_named(tmp_path):
    folder = photo_folder(tmp_path / "photos", count=3)
    for skip_bad in (False, True):
        inputs = RunInputs([str(folder)], skip_bad=skip_bad, report=quiet)
        save_photo(folder / "1.png", size=(48, 48))
        failed = []
        stimulus, _ = inputs.stimulus(0, 3, failed)
        if not skip_bad:
            with pytest.raises(StimulusError, match=r"1.png changed while it was being encoded: its header gave a "
                                                    r"32 x 32 square, it now decodes to 48 x 48"):
                list(stimulus.batches(8))
        else:
            (block,) = list(stimulus.batches(8))
            assert block.images.shape == (3, 3, 32, 32)
            assert failed == [{"row": 1, "path": str(folder / "1.png"), "reason": "it changed during the run: its "
                               "header gave a 32 x 32 square, it now decodes to 48 x 48"}]
        save_photo(folder / "1.png", seed=1)


# -- item 12: the API takes files, the command line folders ----------------------------------------
def test_a_folder_given_to_the_api_says_what_the_api_takes(nest, v1, tmp_path):
    folder = photo_folder(tmp_path / "photos")
    with pytest.raises(StimulusError, match=r"images\[0\]: .*photos is a folder; encode takes image files, PIL "
                                            r"images or arrays.*nest-rt encode FOLDER"):
        nest.encode(v1, str(folder))
