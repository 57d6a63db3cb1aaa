"""Folders of real photos: 16-bit PNGs, phone photos with an EXIF orientation, truncated files,
hidden files, non-square and very large images, an output folder inside the input folder."""
from __future__ import annotations

import json
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

MODEL = ["--model", "fwrf:roi=V1"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nest_rt.cli", *args], capture_output=True, text=True, timeout=600)


def photo(size=(48, 48), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize(size, Image.BILINEAR)


def png_16_bit_rgb(pixels: np.ndarray) -> bytes:
    """A 48-bit RGB PNG, written by hand (Pillow does not write them)."""
    height, width, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@pytest.fixture
def v1(nest):
    return nest.get_encoding_model("fmri-nsd-fwrf", subject=SUBJECT, selection={"roi": "V1"})


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    values = np.random.default_rng(1).integers(0, 65536, (40, 40), dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")  # mode I;16
    eight_bit = (values >> 8).astype(np.uint8)
    np.testing.assert_array_equal(load_image(str(tmp_path / "deep.png")), np.stack([eight_bit] * 3))
    (tmp_path / "rgb48.png").write_bytes(png_16_bit_rgb(np.stack([values] * 3, axis=-1)))
    np.testing.assert_array_equal(load_image(str(tmp_path / "rgb48.png")), np.stack([eight_bit] * 3))
    inputs = RunInputs([str(tmp_path)], report=quiet)
    (converted,) = inputs.images.converted
    assert converted["mode"] == "I;16" and "16-bit: high byte" in converted["conversion"]


def test_32_bit_and_float_images_are_refused(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.int32)).save(tmp_path / "wide.tif")
    Image.fromarray(np.zeros((8, 8), np.float32)).save(tmp_path / "float.tif")
    reasons = []
    with pytest.raises(StimulusError, match="2 image\\(s\\) cannot be encoded"):
        RunInputs([str(tmp_path)], report=reasons.append)
    assert any("32-bit integer" in r for r in reasons) and any("floating-point" in r for r in reasons)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied_and_recorded(nest, v1, tmp_path, orientation):
    stored = photo((64, 48), seed=orientation)  # as the camera stored it: 64 wide, 48 high
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    with Image.open(tmp_path / "phone.jpg") as image:
        upright = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))  # what a viewer shows
    height, width = upright.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    expected = upright[top:top + side, left:left + side].transpose(2, 0, 1)
    np.testing.assert_array_equal(load_image(str(tmp_path / "phone.jpg")), expected)
    inputs = RunInputs([str(tmp_path)], center_crop=True, report=quiet)
    assert inputs.images.oriented == [{"path": str(tmp_path / "phone.jpg"), "orientation": orientation}]
    assert inputs.images.cropped[0]["size"] == [width, height]  # the upright size
    got = nest.encode(v1, [str(tmp_path / "phone.jpg")], center_crop=True, show_progress=False)
    np.testing.assert_array_equal(got, nest.encode(v1, expected[None], show_progress=False))


def truncated_folder(folder: Path, count: int = 7, bad: int = 4) -> Path:
    folder.mkdir()
    for index in range(count):
        photo(seed=index).save(folder / f"img_{index}.jpg", quality=95)
    data = (folder / f"img_{bad}.jpg").read_bytes()
    (folder / f"img_{bad}.jpg").write_bytes(data[:len(data) * 2 // 3])  # the header still reads
    return folder


def test_a_truncated_file_can_be_skipped_without_losing_chunks(bundle_dir, nest, v1, tmp_path):
    folder = truncated_folder(tmp_path / "photos")
    out = tmp_path / "out"
    command = ["encode", str(folder), "--bundle", str(bundle_dir), *MODEL, "--out", str(out),
               "--chunk-size", "2", "--no-progress"]
    stopped = cli(*command)
    assert stopped.returncode == 2 and "Traceback" not in stopped.stderr
    assert "img_4.jpg" in stopped.stderr and "--skip-bad-images" in stopped.stderr
    assert json.loads((out / "progress.json").read_text())["chunks_done"] == [0, 1]  # rows 0-3 kept
    resumed = cli(*command, "--skip-bad-images")
    assert resumed.returncode == 0, resumed.stderr
    assert "(2 of 4 chunks to do)" in resumed.stdout and "img_4.jpg" in resumed.stdout
    record = json.loads((out / "run.json").read_text())
    (rejected,) = record["inputs"]["rejected"]
    assert rejected["row"] == 4 and rejected["path"].endswith("img_4.jpg") and "decode" in rejected["reason"]
    responses = np.load(out / record["outputs"][0]["arrays"]["responses"]["file"])
    assert np.isnan(responses[4]).all() and np.isfinite(np.delete(responses, 4, axis=0)).all()
    good = [str(folder / f"img_{i}.jpg") for i in (0, 1, 2, 3, 5, 6)]
    np.testing.assert_allclose(np.delete(responses, 4, axis=0), nest.encode(v1, good, show_progress=False),
                               rtol=1e-5, atol=1e-6)


def test_a_truncated_png_fails_as_a_truncated_jpeg_does(tmp_path):
    """The run's skipping above catches this one error for every format."""
    from nest_rt.errors import StimulusFileNotFoundError
    photo((64, 64)).save(tmp_path / "cut.png")
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:len(data) // 2])
    inputs = RunInputs([str(tmp_path)], report=quiet)  # the header reads
    assert inputs.images.paths == [str(tmp_path / "cut.png")]
    with pytest.raises(StimulusFileNotFoundError, match="cannot decode"):
        load_image(str(tmp_path / "cut.png"))


def test_decode_failures_of_shards_are_merged(bundle_dir, tmp_path):
    folder = truncated_folder(tmp_path / "photos")
    shards = []
    for index in range(2):
        shards.append(tmp_path / f"shard{index}")
        encode_run(bundle_dir, RunInputs([str(folder)], skip_bad=True, report=quiet), ["fwrf:roi=V1"], shards[-1],
                   imageset="set", shard=(index, 2), chunk_size=2, show_progress=False, log=quiet)
    merged = cli("merge", *map(str, shards), "--out", str(tmp_path / "merged"))
    assert merged.returncode == 0, merged.stderr
    record = json.loads((tmp_path / "merged" / "run.json").read_text())
    assert [item["row"] for item in record["inputs"]["rejected"]] == [4]


def test_hidden_files_are_not_images(tmp_path):
    folder = tmp_path / "photos"
    (folder / ".thumbnails").mkdir(parents=True)
    photo().save(folder / "a.png")
    photo().save(folder / ".hidden.png")
    photo().save(folder / ".thumbnails" / "a.png")
    (folder / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")
    inputs = RunInputs([str(folder)], report=quiet)
    assert inputs.images.paths == [str(folder / "a.png")] and not inputs.images.rejected


def test_an_output_folder_inside_the_inputs_is_never_read(bundle_dir, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(3):
        photo(seed=index).save(folder / f"{index}.png")
    command = ["encode", str(folder), "--bundle", str(bundle_dir), *MODEL, "--out", str(folder / "run"),
               "--no-progress"]
    assert cli(*command).returncode == 0
    (folder / "run" / "plots").mkdir()
    photo().save(folder / "run" / "plots" / "a plot.png")  # as nest-rt plot would write
    again = cli(*command)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr
    assert len(json.loads((folder / "run" / "run.json").read_text())["inputs"]["items"]) == 3


def test_every_rejected_file_is_listed(bundle_dir, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    photo().save(folder / "good.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    photo((60, 80)).save(folder / "wide.png")
    result = cli("encode", str(folder), "--bundle", str(bundle_dir), *MODEL, "--out", str(tmp_path / "o"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(lines) == 3 and lines[0].startswith("rejected: ") and lines[1].startswith("rejected: ")
    assert "broken.jpg: cannot read it as an image" in result.stderr and "wide.png: not square" in result.stderr
    assert "2 image(s) cannot be encoded" in lines[2]


def test_large_images_are_batched_by_pixels(nest, v1, monkeypatch, tmp_path):
    """Memory grows with the square of the side: batches hold at most MAX_BATCH_PIXELS pixels."""
    monkeypatch.setattr(image_module, "MAX_BATCH_PIXELS", 3 * 300 * 300)
    seen = []
    real_run = type(v1).run_batch
    monkeypatch.setattr(type(v1), "run_batch", lambda self, images, *rest: (seen.append(images.shape),
                                                                            real_run(self, images, *rest))[1])
    big = np.random.default_rng(0).integers(0, 256, (7, 3, 600, 600), dtype=np.uint8)
    files = []
    for index in range(4):
        files.append(tmp_path / f"{index}.png")
        Image.fromarray(big[index].transpose(1, 2, 0)).save(files[-1])
    small = np.random.default_rng(1).integers(0, 256, (9, 3, 100, 100), dtype=np.uint8)
    for stimulus in (big, [*map(str, files), *small]):
        seen.clear()
        nest.encode(v1, stimulus, show_progress=False)
        assert all(n * side * side <= 3 * 300 * 300 or n == 1 for n, _, side, _ in seen), seen
        assert seen[0][0] == 1  # a 600 x 600 image alone is over the limit
    assert max(n for n, *_ in seen) > 1  # small images still share batches


def test_the_api_can_crop_to_the_central_square(nest, v1, tmp_path):
    wide = np.random.default_rng(2).integers(0, 256, (3, 3, 50, 70), dtype=np.uint8)
    with pytest.raises(StimulusError, match="center_crop=True"):
        nest.encode(v1, wide, show_progress=False)
    square = np.ascontiguousarray(wide[:, :, :, 10:60])
    expected = nest.encode(v1, square, show_progress=False)
    np.testing.assert_array_equal(nest.encode(v1, wide, center_crop=True, show_progress=False), expected)
    np.testing.assert_array_equal(nest.encode(v1, wide.transpose(0, 2, 3, 1), center_crop=True), expected)
    pil = [Image.fromarray(image.transpose(1, 2, 0)) for image in wide]
    np.testing.assert_array_equal(nest.encode(v1, pil, center_crop=True, show_progress=False), expected)
    np.testing.assert_array_equal(nest.encode_many([v1], pil, center_crop=True, show_progress=False)[0], expected)
