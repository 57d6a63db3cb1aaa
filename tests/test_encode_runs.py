"""``nest-rt encode`` / ``merge`` / ``list`` / ``info`` / ``verify`` / ``plot`` and the run files.

The bundle holds all three model families (fwRF V1 + lateral, EEG subjects 1-2, fsaverage
subject 1; see conftest.vit_toolkit). Responses written by a run are compared with the NEST API
on the same images: the run must store exactly what ``NEST.encode`` returns.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nest_rt import NEST, OutputWriteError, RunStateError
from nest_rt.image_files import load_image
from nest_rt.runs import RunInputs, encode_run, merge_runs

EEG_SPEC = "eeg:subjects=1,2:channels=Oz,O1,Fp1:timepoints=0-9,100-139"
ALL_SPECS = ["fwrf:roi=all", EEG_SPEC, "fsaverage:roi=V1v", "eeg:subjects=1"]


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nest_rt.cli", *args], capture_output=True, text=True,
                          timeout=600, **kwargs)


def write_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """Square RGB PNGs of two sizes, a greyscale JPEG and a non-square one in a subfolder."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        size = 64 if index % 3 else 96
        paths.append(folder / f"img_{index:03d}.png")
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(paths[-1])
    (folder / "more").mkdir(exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (72, 72), dtype=np.uint8)).save(folder / "more" / "grey.jpg")
    Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(folder / "more" / "wide.png")
    return paths


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images") / "set"
    write_images(folder, 9)
    return folder


def encode(bundle, images_dir, out, specs=ALL_SPECS, **options):
    inputs = RunInputs([str(images_dir)], center_crop=options.pop("center_crop", True),
                       skip_bad=options.pop("skip_bad", False))
    return encode_run(bundle, inputs, specs, out, imageset="set", show_progress=False, log=lambda _: None,
                      **options)


def output_files(out: Path) -> dict[str, bytes]:
    """Every response, metadata and HDF5 file of a finished run, by relative path."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.suffix in (".npy", ".npz", ".h5")}


@pytest.fixture(scope="module")
def complete_run(vit_bundle, images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "single"
    encode(vit_bundle, images, out, chunk_size=4, h5=True)
    return out


def test_run_stores_what_the_api_returns(vit_bundle, images, complete_run):
    record = json.loads((complete_run / "run.json").read_text())
    assert record["status"] == "complete"
    items = record["inputs"]["items"]
    # folder walked recursively in sorted order; greyscale converted, non-square cropped, both listed
    assert [Path(p).name for p in items] == [f"img_{i:03d}.png" for i in range(9)] + ["grey.jpg", "wide.png"]
    assert [Path(c["path"]).name for c in record["inputs"]["converted"]] == ["grey.jpg"]
    assert [Path(c["path"]).name for c in record["inputs"]["cropped"]] == ["wide.png"]
    names = [o["name"] for o in record["outputs"]]
    assert names[:2] == ["fmri-nsd-fwrf_sub-01_roi-V1", "fmri-nsd-fwrf_sub-01_roi-lateral"]
    assert len(names) == 6 and names[-1] == "eeg-things_eeg_2-vit_b_32_sub-01"
    nest = NEST(vit_bundle)
    arrays = [load_image(p) for p in items]
    for output in record["outputs"]:
        model = nest.get_encoding_model(output["model_id"], subject=output["subject"],
                                        selection=output["selection"] or None)
        expected = [nest.encode(model, [a], show_progress=False) for a in arrays]
        for array_name, info in output["arrays"].items():
            stored = np.load(complete_run / info["file"])
            if array_name == "responses":
                wanted = np.concatenate(expected)
            else:
                wanted = np.concatenate([e[0 if array_name == "lh" else 1] for e in expected])
            assert stored.shape == tuple(info["shape"]) and stored.dtype == np.float32
            np.testing.assert_allclose(stored, wanted, rtol=1e-5, atol=1e-5 * np.abs(wanted).max(initial=1))
            import h5py
            with h5py.File(complete_run / output["h5"]) as handle:
                key = "synthetic_neural_responses" if array_name == "responses" else array_name
                assert np.array_equal(handle[key][:], stored)
    eeg = next(o for o in record["outputs"] if o["name"].startswith("eeg-things_eeg_2-vit_b_32_sub-01_sel-"))
    assert eeg["arrays"]["responses"]["shape"] == [11, 4, 3, 50]
    assert eeg["axes"]["channels"] == ["Oz", "O1", "Fp1"] and len(eeg["axes"]["times"]) == 50


def test_run_files_read_back_through_load_insilico_neural_responses(vit_bundle, complete_run):
    nest = NEST(vit_bundle)
    responses, metadata = nest.load_insilico_neural_responses("fmri", "nsd", "fwrf", "set", 1, "V1",
                                                              responses_dir=complete_run)
    stored = np.load(next(complete_run.rglob("synthetic_neural_responses_sub-01_roi-V1.npy")))
    assert np.array_equal(responses[:], stored)
    assert str(metadata["selection"]["roi"]) == "V1" and "ncsnr" in metadata["fmri"]
    eeg = nest.load_insilico_neural_responses("eeg", "things_eeg_2", "vit_b_32", "set", 1,
                                              responses_dir=complete_run, return_metadata=False)
    assert eeg.shape == (11, 4, 63, 140)


def test_kill_and_resume_gives_the_same_bytes(vit_bundle, images, complete_run, tmp_path):
    """SIGKILL a CLI run after some chunks, resume it with the same command, compare bytes."""
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "nest_rt.cli", "encode", str(images), "--bundle", str(vit_bundle),
               "--out", str(out), "--imageset", "set", "--chunk-size", "1", "--center-crop", "--h5",
               "--no-progress", *[arg for spec in ALL_SPECS for arg in ("--model", spec)]]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    done: list[int] = []
    while time.monotonic() < deadline and process.poll() is None:
        try:
            done = json.loads((out / "progress.json").read_text())["chunks_done"]
        except (FileNotFoundError, json.JSONDecodeError):
            done = []
        if len(done) >= 2:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    finished = json.loads((out / "progress.json").read_text())["chunks_done"]
    assert 2 <= len(finished) < 11
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    assert not list(out.rglob("*.h5")) and not list(out.rglob("*.npy"))  # only .partial files so far
    with pytest.raises(RunStateError, match="unfinished"):
        NEST(vit_bundle).load_insilico_neural_responses("fmri", "nsd", "fwrf", "set", 1, "V1", responses_dir=out)

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"({11 - len(finished)} of 11 chunks to do)" in resumed.stdout  # finished chunks are not redone
    assert output_files(out) == output_files(complete_run_with_chunk_size_1(vit_bundle, images, tmp_path))
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "nothing to do" in again.stdout


def complete_run_with_chunk_size_1(bundle, images, tmp_path) -> Path:
    out = tmp_path / "uninterrupted"
    encode(bundle, images, out, chunk_size=1, h5=True)
    return out


def test_two_shards_merge_into_the_single_run(vit_bundle, images, complete_run, tmp_path):
    shards = [tmp_path / f"shard{i}" for i in range(2)]
    for index, folder in enumerate(shards):
        record = encode(vit_bundle, images, folder, chunk_size=4, h5=True, shard=(index, 2))
        assert record["shard"]["count"] == 2
    # rows 0-7 (chunks 0, 1) and 8-10 (chunk 2)
    assert [json.loads((s / "run.json").read_text())["inputs"]["count"] for s in shards] == [4, 7]
    merged = cli("merge", str(shards[1]), str(shards[0]), "--out", str(tmp_path / "merged"))
    assert merged.returncode == 0, merged.stderr
    assert output_files(tmp_path / "merged") == output_files(complete_run)
    single = json.loads((complete_run / "run.json").read_text())
    assert json.loads((tmp_path / "merged" / "run.json").read_text()) == single
    for name in ("run.json", "progress.json"):  # the README: identical to an unsharded run
        assert (tmp_path / "merged" / name).read_bytes() == (complete_run / name).read_bytes(), name

    def refused(folders, words, out_name):
        with pytest.raises(RunStateError) as info:
            merge_runs(folders, tmp_path / out_name, log=lambda _: None)
        assert all(word in str(info.value) for word in words)
        assert not (tmp_path / out_name).exists()
    refused([shards[0]], ["missing [1]"], "gap")
    refused([shards[0], shards[0], shards[1]], ["repeated [0]"], "overlap")
    other = tmp_path / "other"
    encode(vit_bundle, images, other, specs=["fwrf:roi=V1"], chunk_size=4, shard=(1, 2))
    refused([shards[0], other], ["not a shard of the same run", "outputs"], "mixed")
    damaged = next(shards[1].rglob("*roi-V1.npy"))
    damaged.write_bytes(damaged.read_bytes()[:-4] + b"\0\0\0\0")
    refused(list(shards), ["sha256"], "damaged")


def test_a_different_command_on_the_same_output_is_refused(vit_bundle, images, complete_run, tmp_path):
    with pytest.raises(RunStateError, match="differs in: h5, outputs"):
        encode(vit_bundle, images, complete_run, specs=["fwrf:roi=V1"], chunk_size=4)
    with pytest.raises(RunStateError, match="chunk_size"):
        encode(vit_bundle, images, complete_run, chunk_size=8, h5=True)
    changed = tmp_path / "changed"
    write_images(changed, 3)
    out = tmp_path / "out"
    encode(vit_bundle, changed, out, specs=["fwrf:roi=V1"], chunk_size=2)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(changed / "img_001.png")  # replaced input
    os.utime(changed / "img_001.png", ns=(0, 0))
    with pytest.raises(RunStateError, match="inputs_sha256"):
        encode(vit_bundle, changed, out, specs=["fwrf:roi=V1"], chunk_size=2)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(RunStateError, match="not empty"):
        encode(vit_bundle, changed, tmp_path / "busy", specs=["fwrf:roi=V1"])


def test_a_second_process_on_the_same_output_is_refused(vit_bundle, images, tmp_path):
    import fcntl
    out = tmp_path / "busy_run"
    out.mkdir()
    with open(out / ".lock", "w") as held:  # as a running nest-rt encode holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RunStateError, match="another nest-rt process is writing"):
            encode(vit_bundle, images, out, specs=["fwrf:roi=V1"])
    encode(vit_bundle, images, out, specs=["fwrf:roi=V1"])  # free again once released


def disk_full_after_first_chunk(out: Path, real_pwrite):
    """os.pwrite as on a disk that fills up once the first chunk of ``out`` is recorded."""
    def pwrite(fd, data, offset):
        progress = out / "progress.json"
        if progress.exists() and json.loads(progress.read_text())["chunks_done"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)
    return pwrite


def test_disk_full_keeps_finished_chunks_and_resumes(vit_bundle, images, complete_run, tmp_path, monkeypatch):
    real_pwrite = os.pwrite
    for out in (tmp_path / "full", tmp_path / "gone"):
        monkeypatch.setattr(os, "pwrite", disk_full_after_first_chunk(out, real_pwrite))
        with pytest.raises(OutputWriteError, match="No space left on device.*resume"):
            encode(vit_bundle, images, out, chunk_size=4, h5=True)
        monkeypatch.setattr(os, "pwrite", real_pwrite)
        assert json.loads((out / "progress.json").read_text())["chunks_done"] == [0]
    encode(vit_bundle, images, tmp_path / "full", chunk_size=4, h5=True)
    assert output_files(tmp_path / "full") == output_files(complete_run)

    # a partial file removed behind the run's back: the run starts again rather than trust it
    next((tmp_path / "gone").rglob("*roi-V1.npy.partial")).unlink()
    messages: list[str] = []
    encode_run(vit_bundle, RunInputs([str(images)], center_crop=True), ALL_SPECS, tmp_path / "gone",
               imageset="set", chunk_size=4, h5=True, show_progress=False, log=messages.append)
    assert any("starting it again" in m for m in messages) and any("(3 of 3 chunks to do)" in m for m in messages)
    assert output_files(tmp_path / "gone") == output_files(complete_run)


def test_array_inputs_match_file_inputs(vit_bundle, tmp_path):
    rng = np.random.default_rng(3)
    stack = rng.integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", stack)
    import h5py
    with h5py.File(tmp_path / "images.h5", "w") as handle:
        handle["stimuli"] = stack.transpose(0, 3, 1, 2)
    outs = []
    for name in ("images.npy", "images.h5"):
        outs.append(tmp_path / f"out_{name}")
        encode_run(vit_bundle, RunInputs([str(tmp_path / name)]), ["fwrf:roi=V1", "eeg:subjects=2"], outs[-1],
                   imageset="arrays", chunk_size=2, show_progress=False, log=lambda _: None)
    assert output_files(outs[0]) == output_files(outs[1])
    record = json.loads((outs[1] / "run.json").read_text())
    assert record["inputs"]["kind"] == "array" and record["inputs"]["array"]["dataset"] == "stimuli"
    from nest_rt.plots import _thumbnail
    for out, layout in zip(outs, ("NHWC", "NCHW")):  # nest-rt plot shows the run's own images
        run = json.loads((out / "run.json").read_text())
        assert run["inputs"]["array"]["layout"] == layout
        np.testing.assert_array_equal(_thumbnail(out, run, 3), stack[3])
    nest = NEST(vit_bundle)
    model = nest.get_encoding_model("fmri-nsd-fwrf", subject=1, selection={"roi": "V1"})
    stored = np.load(outs[0] / record["outputs"][0]["arrays"]["responses"]["file"])
    np.testing.assert_allclose(stored, nest.encode(model, stack, show_progress=False), rtol=1e-5, atol=1e-6)


def test_bad_inputs_are_clear_one_line_errors(vit_bundle, tmp_path):
    base = ["encode", "--bundle", str(vit_bundle), "--model", "fwrf:roi=V1"]

    def fails(args, *words):
        """Exit 2, one error line (after one 'rejected:' line per rejected image, if any)."""
        result = cli(*base[:1], *args, *base[1:], "--out", str(tmp_path / "o"))
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        *listed, error = result.stderr.strip().splitlines()
        assert all(line.startswith("rejected: ") for line in listed) and error.startswith("nest-rt encode: ")
        for word in words:
            assert word in result.stderr, result.stderr
    (tmp_path / "empty").mkdir()
    fails([str(tmp_path / "empty")], "holds no image files")
    fails([str(tmp_path / "nothing_here")], "no such file, folder or pattern")
    folder = tmp_path / "bad"
    write_images(folder, 2)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    fails([str(folder)], "broken.jpg", "cannot be encoded", "--skip-bad-images")
    fails([str(folder / "more" / "wide.png")], "not square", "--center-crop")
    fails([str(folder / "img_000.png"), "--shard", "1/1"], "--shard")
    fails([str(folder / "img_000.png"), "--shard", "x"], "I/N")
    fails([str(folder / "img_000.png"), "--model", "fwrf"], "roi=")
    fails([str(folder / "img_000.png"), "--model", "eeg:channels=Oz,Nope"], "Nope")
    fails([str(folder / "img_000.png"), "--model", "eeg:subjects=5"], "does not contain")
    fails([str(folder / "img_000.png"), "--model", "eeg:colour=red"], "unknown keys")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        result = cli(*base, str(folder / "img_000.png"), "--out", str(locked / "run"))
        assert result.returncode == 2 and "not writable" in result.stderr

    skipped = tmp_path / "skipped"
    result = cli(*base, str(folder), "--skip-bad-images", "--out", str(skipped), "--no-progress")
    assert result.returncode == 0, result.stderr
    record = json.loads((skipped / "run.json").read_text())
    assert {Path(r["path"]).name for r in record["inputs"]["rejected"]} == {"broken.jpg", "wide.png"}
    assert record["inputs"]["count"] == 3 and "2 rejected images listed in run.json" in result.stdout


def test_list_info_verify_and_plot(vit_bundle, complete_run, tmp_path):
    listing = cli("list", "--bundle", str(vit_bundle))
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split()[:4] == ["model", "subject", "roi/split", "outputs"]
    assert any(line.split()[:4] == ["fmri-nsd-fwrf", "1", "lateral", "20"] for line in lines)
    assert any(line.split()[:4] == ["fmri-nsd_fsaverage-vit_b_32", "1", "-", "327,684"] for line in lines)
    assert "5 models in" in lines[-1]
    info = cli("info", "eeg", "--bundle", str(vit_bundle))
    assert info.returncode == 0 and "sub-02" in info.stdout and "precisions fp32, int8, fp16" in info.stdout
    assert cli("info", "nope", "--bundle", str(vit_bundle)).returncode == 2

    verified = cli("verify", str(vit_bundle))
    assert verified.returncode == 0, verified.stderr
    assert "verified: 5 models" in verified.stdout
    copy = tmp_path / "bundle"
    copy.mkdir()
    for path in vit_bundle.rglob("*"):
        target = copy / path.relative_to(vit_bundle)
        if path.is_dir():
            target.mkdir(exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target) if path.stat().st_size > 2**20 else target.write_bytes(path.read_bytes())
    sidecar = next(copy.rglob("sub-01_roi-V1.json"))
    sidecar.write_text(sidecar.read_text() + " ")
    damaged = cli("verify", str(copy))
    assert damaged.returncode == 2 and "sub-01_roi-V1.json" in damaged.stderr

    plotted = cli("plot", str(complete_run), "--out", str(tmp_path / "plots"), "--images", "0", "9")
    assert plotted.returncode == 0, plotted.stderr
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert len(pngs) == 12 and "eeg-things_eeg_2-vit_b_32_sub-01.png" in pngs
    with Image.open(tmp_path / "plots" / "eeg-things_eeg_2-vit_b_32_sub-01.png") as png:
        assert np.asarray(png.convert("L")).std() > 0


def test_help_explains_the_model_specs():
    result = cli("encode", "--help")
    assert result.returncode == 0
    for words in ("fwrf:subjects=1:roi=V1,FFA-1", "--shard", "resume", "--h5"):
        assert words in result.stdout


@pytest.mark.parametrize("suffix", [".npy", ".h5"])
def test_run_inputs_travel_without_their_rows(tmp_path, suffix):
    """What --engine ray sends each worker: an array input pickles as its path (the worker opens
    it again), not as its rows; an HDF5 dataset, which cannot pickle, too."""
    import pickle
    images = np.random.default_rng(3).integers(0, 256, (6, 3, 40, 40), dtype=np.uint8)
    path = tmp_path / f"images{suffix}"
    if suffix == ".npy":
        np.save(path, images)
    else:
        h5py = pytest.importorskip("h5py")
        with h5py.File(path, "w") as handle:
            handle["stimuli"] = images
    inputs = RunInputs([str(path)])
    packed = pickle.dumps(inputs)
    assert len(packed) < images.nbytes // 4
    copy = pickle.loads(packed)
    for original, travelled in zip(*(list(i.stimulus(2, 5)[0].batches(8)) for i in (inputs, copy))):
        np.testing.assert_array_equal(original.images, travelled.images)
