"""Encode and merge under faults and hostile inputs: run records that name files outside their
folder, full disks while writing the run's own files, leftovers of killed processes, two
processes at once, SIGTERM. Every case ends in the documented one-line error (or works), and
nothing is written outside the output folder.
"""
from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nest_rt import RunStateError
from nest_rt.bundle import sha256_file
from nest_rt.errors import OutputWriteError
from nest_rt.runs import RunInputs, encode_run, merge_runs
from nest_rt_export import synthetic

from conftest import edit_json, quiet

SPECS = ["fwrf:roi=V1,lateral"]


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nest_rt.cli", *args], capture_output=True, text=True,
                          **{"timeout": 600, **kwargs})


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("stack") / "images.npy"
    np.save(path, synthetic.synthetic_images(9, 64, seed=2))
    return path


def encode(bundle, stack, out, **options):
    return encode_run(bundle, RunInputs([str(stack)]), options.pop("specs", SPECS), out, imageset="set",
                      show_progress=False, log=quiet, chunk_size=options.pop("chunk_size", 3), **options)


@pytest.fixture(scope="module")
def shards(bundle_dir, stack, tmp_path_factory) -> list[Path]:
    folders = [tmp_path_factory.mktemp("shards") / f"shard{i}" for i in range(2)]
    for index, folder in enumerate(folders):
        encode(bundle_dir, stack, folder, shard=(index, 2))
    return folders


def copied(folders: list[Path], tmp_path: Path) -> list[Path]:
    copies = []
    tmp_path.mkdir(parents=True, exist_ok=True)
    for folder in folders:
        target = tmp_path / folder.name
        subprocess.run(["cp", "-a", str(folder), str(target)], check=True)
        copies.append(target)
    return copies


def edit_record(folder: Path, change) -> None:
    edit_json(folder / "run.json", change)


def first_array(record: dict) -> dict:
    return record["outputs"][0]["arrays"]["responses"]


@pytest.mark.parametrize("where", ["absolute", "parent"])
def test_merge_never_writes_outside_its_output(shards, tmp_path, where):
    """A run.json naming a file outside its folder (with that file's sha256, so the hash check
    passes) is refused before anything is created; the file named is untouched."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    copies = copied(shards, tmp_path / "copies")
    out = tmp_path / "merged"
    name = str(victim) if where == "absolute" else "../../victim.txt"
    for folder in copies:
        edit_record(folder, lambda r: first_array(r).update(file=name, sha256=sha256_file(victim)))
    with pytest.raises(RunStateError, match="not a plain relative path"):
        merge_runs(copies, out, log=quiet)
    assert victim.read_text() == "precious"
    assert not out.exists() and not out.with_name("merged.partial").exists()
    result = cli("merge", *map(str, copies), "--out", str(out))
    assert result.returncode == 2 and "Traceback" not in result.stderr and "not a plain relative path" in result.stderr


def test_merge_refuses_a_symlink_out_of_a_shard(shards, tmp_path):
    copies = copied(shards, tmp_path / "copies")
    name = first_array(json.loads((copies[1] / "run.json").read_text()))["file"]
    outside = tmp_path / "outside.npy"
    outside.write_bytes((copies[1] / name).read_bytes())
    (copies[1] / name).unlink()
    (copies[1] / name).symlink_to(outside)
    with pytest.raises(RunStateError, match="leads outside"):
        merge_runs(copies, tmp_path / "merged", log=quiet)


def test_merge_checks_every_source_before_writing(shards, tmp_path):
    copies = copied(shards, tmp_path / "copies")
    record = json.loads((copies[1] / "run.json").read_text())
    last = record["outputs"][-1]["arrays"]["responses"]["file"]  # the very last file merge would copy
    data = bytearray((copies[1] / last).read_bytes())
    data[-1] ^= 1
    (copies[1] / last).write_bytes(bytes(data))
    out = tmp_path / "merged"
    with pytest.raises(RunStateError, match="does not match the sha256"):
        merge_runs(copies, out, log=quiet)
    assert not out.exists() and not out.with_name("merged.partial").exists()


def test_two_merges_into_one_output(shards, tmp_path):
    import fcntl
    out = tmp_path / "merged"
    staging = out.with_name("merged.partial")
    staging.mkdir()
    (staging / ".nest-rt-merge-staging").write_text("")  # what merge writes into the staging folder it creates
    with open(staging / ".lock", "w") as held:  # as a merge in progress holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RunStateError, match="another nest-rt process is merging into"):
            merge_runs(shards, out, log=quiet)
    merged = merge_runs(shards, out, log=quiet)  # free again: the earlier staging is reused
    assert merged["inputs"]["count"] == 9 and not staging.exists()


def test_a_leftover_temporary_run_record_is_ignored(bundle_dir, stack, tmp_path):
    """A disk that filled (or a SIGKILL) before run.json's first rename leaves run.json.tmp and
    nothing else: the next run starts rather than calling the folder someone else's."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json.tmp").write_text('{"format": "nest_rt.ru')
    (out / ".lock").write_text("")
    record = encode(bundle_dir, stack, out)
    assert record["status"] == "complete" and not (out / "run.json.tmp").exists()


def test_a_second_encode_waits_for_no_half_written_folder(bundle_dir, stack, tmp_path):
    """While one encode prepares its folder (lock held, first files appearing), a second one is
    told another process is writing, not that the folder is someone else's."""
    import fcntl
    out = tmp_path / "out"
    (out / "modality-fmri").mkdir(parents=True)
    (out / "run.json.tmp").write_text("{")
    with open(out / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RunStateError, match="another nest-rt process is writing"):
            encode(bundle_dir, stack, out)


def fail_fsync_of(suffix: str, real_fsync):
    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(suffix):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)
    return fsync


@pytest.mark.parametrize("suffix", ["run.json.tmp", "progress.json.tmp"])
def test_disk_full_on_the_run_record(bundle_dir, stack, tmp_path, monkeypatch, suffix):
    out = tmp_path / "out"
    monkeypatch.setattr(os, "fsync", fail_fsync_of(suffix, os.fsync))
    with pytest.raises(OutputWriteError, match=f"writing .*{suffix[:-4]} failed \\(No space left on device\\)"):
        encode(bundle_dir, stack, out)
    assert not (out / suffix).exists()
    monkeypatch.undo()
    assert encode(bundle_dir, stack, out)["status"] == "complete"


def test_disk_full_on_the_metadata(bundle_dir, stack, tmp_path, monkeypatch):
    from nest_rt.runs import encode as run_encode

    def full(handle, nested):
        handle.write(b"PK")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(run_encode, "write_nested_npz", full)
    out = tmp_path / "out"
    with pytest.raises(OutputWriteError, match="metadata_sub-01_roi-V1.npz failed"):
        encode(bundle_dir, stack, out)
    assert not list(out.rglob("*.npz*"))
    monkeypatch.undo()
    assert encode(bundle_dir, stack, out)["status"] == "complete"


def test_a_full_disk_during_h5_is_one_line(vit_bundle, stack, tmp_path):
    """The HDF5 copy is written last; a file size limit the .npy files fit in but the .h5 does not
    (what a nearly full disk does) gives the one-line error, no traceback, no crash."""
    out = tmp_path / "out"
    command = ["encode", str(stack), "--bundle", str(vit_bundle), "--model", "eeg:subjects=1", "--out", str(out),
               "--h5", "--no-progress", "--chunk-size", "3"]
    npy_bytes = 128 + 9 * 4 * 63 * 140 * 4

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # then writes past the limit fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (npy_bytes + 512, resource.RLIM_INFINITY))
    result = subprocess.run([sys.executable, "-m", "nest_rt.cli", *command], capture_output=True, text=True,
                            timeout=600, preexec_fn=limit_file_size)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert ".h5 failed" in result.stderr and "resume" in result.stderr
    assert not list(out.rglob("*.h5")) and not list(out.rglob("*.h5.partial"))
    finished = cli(*command)  # the limit lifted, the same command finishes the run
    assert finished.returncode == 0, finished.stderr
    assert len(list(out.rglob("*.h5"))) == 1


def test_sigterm_behaves_like_ctrl_c(bundle_dir, tmp_path):
    """Slurm sends SIGTERM before it kills a job: the run stops after its current chunk's
    files are safe, says how to resume, and exits 143."""
    images = tmp_path / "images.npy"
    np.save(images, synthetic.synthetic_images(40, 64, seed=3))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "nest_rt.cli", "encode", str(images), "--bundle", str(bundle_dir),
               "--model", "fwrf:roi=lateral,ventral,early", "--out", str(out), "--chunk-size", "1", "--no-progress"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if json.loads((out / "progress.json").read_text())["chunks_done"]:
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, (process.returncode, stderr)
    assert "terminated (SIGTERM)" in stderr and "run the same command again to resume" in stderr
    assert "Traceback" not in stderr
    done = json.loads((out / "progress.json").read_text())["chunks_done"]
    assert 1 <= len(done) < 40
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0 and f"({40 - len(done)} of 40 chunks to do)" in resumed.stdout


@pytest.mark.parametrize("signal_number, exit_code, after_chunk", [(signal.SIGTERM, 143, 0), (signal.SIGINT, 130, 2)])
def test_a_stop_swallowed_by_a_finaliser_still_stops_the_run(bundle_dir, stack, tmp_path, monkeypatch, capsys,
                                                             signal_number, exit_code, after_chunk):
    """A signal's KeyboardInterrupt raised inside a __del__ (as Ray's result streams have) is
    dropped by Python. The noted signal still stops the run after its next block, or, when the
    last chunk was done already, gives the signal's exit code at the end; the dropped exception is
    not printed as an error."""
    from nest_rt import cli
    from nest_rt.runs import chunks as run_chunks

    finalisers_interrupted = []

    class SignalledInFinaliser:
        def __del__(self):
            finalisers_interrupted.append(True)
            signal.raise_signal(signal_number)  # the handler runs here, inside __del__
            finalisers_interrupted[-1] = False  # not reached when the handler raised in __del__

    real_chunk_items = run_chunks.chunk_items

    def chunk_items(*args, **kwargs):
        for item in real_chunk_items(*args, **kwargs):
            yield item
            if isinstance(item, run_chunks.ChunkDone) and item.chunk == after_chunk:
                SignalledInFinaliser()

    monkeypatch.setattr(run_chunks, "chunk_items", chunk_items)
    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)  # Python's own, which prints, not pytest's
    out = tmp_path / "out"
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM), sys.unraisablehook
    status = cli.main(["encode", str(stack), "--bundle", str(bundle_dir), "--model", SPECS[0], "--out", str(out),
                       "--chunk-size", "3", "--no-progress"])
    assert finalisers_interrupted == [True]  # the case this test is for happened, once
    stderr = capsys.readouterr().err
    assert status == exit_code and "Traceback" not in stderr, stderr
    assert ("terminated (SIGTERM)" if signal_number == signal.SIGTERM else "interrupted") in stderr
    # after chunk 0: the block of chunk 1 that came next is written, the run stops before chunk 1 is done
    assert json.loads((out / "progress.json").read_text())["chunks_done"] == list(range(after_chunk + 1))
    assert json.loads((out / "run.json").read_text())["status"] == ("complete" if after_chunk == 2 else "running")
    assert before == (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM), sys.unraisablehook)
    monkeypatch.setattr(run_chunks, "chunk_items", real_chunk_items)
    assert encode(bundle_dir, stack, tmp_path / "later")["status"] == "complete"  # the stop ended with main()


# -- arguments checked before anything is allocated or written ------------------------------------
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_a_precision_that_the_run_s_models_lack_is_refused_before_anything_is_written(bundle_dir, stack, tmp_path,
                                                                                      precision):
    """fwRF models have no backbone, so no other precision: it would be recorded and change nothing."""
    out = tmp_path / "out"
    result = cli("encode", str(stack), "--bundle", str(bundle_dir), "--model", SPECS[0], "--out", str(out),
                 "--precision", precision, "--no-progress")
    assert result.returncode == 2 and result.stderr.startswith(f"nest-rt encode: --precision {precision}: only "
                                                                "the backbones of the linear models"), result.stderr
    assert "fmri-nsd-fwrf has none; use --precision fp32" in result.stderr
    assert len(result.stderr.splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("argument, value, expected", [("--chunk-size", "1000000000000", "must be 1 to 1000000"),
                                                       ("--threads", "3000", "must be 1 to 1024")])
def test_numbers_beyond_any_use_are_refused_before_anything_is_written(bundle_dir, stack, tmp_path, argument, value,
                                                                       expected):
    """--threads 3000 ran for minutes (3000 onnxruntime threads per graph)."""
    out = tmp_path / "out"
    result = cli("encode", str(stack), "--bundle", str(bundle_dir), "--model", SPECS[0], "--out", str(out),
                 argument, value, "--no-progress", timeout=120)
    assert result.returncode == 2 and result.stderr == f"nest-rt encode: {argument} {expected}, got {value}\n"
    assert not out.exists()


def test_more_threads_than_cores_is_a_warning(bundle_dir, stack, tmp_path):
    cores = len(os.sched_getaffinity(0))
    result = cli("encode", str(stack), "--bundle", str(bundle_dir), "--model", "fwrf:roi=V1", "--out",
                 str(tmp_path / "out"), "--threads", str(cores + 1), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert (f"warning: --threads {cores + 1} is more than the {cores} CPU cores this process may use; "
            "onnxruntime runs slower with more threads than cores") in result.stdout


def test_a_subject_range_is_checked_before_it_is_expanded(bundle_dir):
    """subjects=1-40000000 filled 3.2 GB with subject names before its error."""
    import tracemalloc
    from nest_rt.bundle import Bundle
    from nest_rt.errors import InvalidParameterError
    from nest_rt.runs import parse_model_spec
    bundle = Bundle(bundle_dir)
    tracemalloc.start()
    try:
        with pytest.raises(InvalidParameterError, match=r"subjects 1-1000000 is not a range within fmri-nsd-fwrf's "
                                                        r"subjects \[1, 2, 3, 4, 5, 6, 7, 8\]"):
            parse_model_spec("fwrf:subjects=1-1000000:roi=V1", bundle)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20, f"{peak} bytes allocated to check the range"


def test_a_non_finite_response_names_the_run_s_row_and_its_file(bundle_dir, tmp_path, monkeypatch):
    """A chunk's images are grouped by size before they are encoded: the error must name the row of
    the run and its file, not the image's place in that grouping (here row 9 comes first in chunk 2)."""
    from PIL import Image
    from nest_rt import models
    from nest_rt.errors import NonFiniteOutputError
    folder = tmp_path / "images"
    folder.mkdir()
    for row in range(12):
        side, value = (48, 200) if row == 9 else (64, row)
        Image.fromarray(np.full((side, side, 3), value, np.uint8)).save(folder / f"image{row:02d}.png")
    real_run_batch = models.FwrfEncodingModel.run_batch

    def run_batch(self, images, device, shared):  # a graph that gives NaN for row 9's image only
        responses = real_run_batch(self, images, device, shared)
        responses[images[:, 0, 0, 0] == 200] = np.nan
        return responses
    monkeypatch.setattr(models.FwrfEncodingModel, "run_batch", run_batch)
    with pytest.raises(NonFiniteOutputError) as error:
        encode_run(bundle_dir, RunInputs([str(folder)], report=quiet), ["fwrf:roi=V1"], tmp_path / "out",
                   imageset="set", show_progress=False, log=quiet, chunk_size=4)
    assert str(error.value).endswith(f"produced NaN or infinite responses for row 9 ({folder / 'image09.png'})")
