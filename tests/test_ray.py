"""nest_rt on Ray (the ray extra): ``nest-rt encode --engine ray`` gives a local run's files byte for
byte, survives a killed worker and a killed driver, and ``nest_rt.ray.Encoder`` in a Ray Data
pipeline gives what ``NEST.encode`` gives.

Ray runs on this machine only (loopback). The encode runs are separate driver processes (as
users run them), each starting and stopping its own local Ray instance; the Ray Data tests start
one in this process. Every Ray process a test started is gone when it ends.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed")
psutil = pytest.importorskip("psutil")

from nest_rt import NEST  # noqa: E402
from nest_rt_export import synthetic  # noqa: E402

from conftest import write_png_folder  # noqa: E402

MODELS = ["--model", "fwrf:roi=V1", "--model", "eeg:subjects=1"]
IMAGES = 16
CHUNK = 2


def ray_processes(since: float) -> list[psutil.Process]:
    """The Ray processes (raylet, GCS, agents, workers) started on this machine since ``since``
    (a test's own: a Ray cluster of the user's, started earlier, is never touched), by their names
    and command lines. Zombies are dead already: the ones of a SIGKILLed driver's Ray wait for a
    reaper that a container's init may never be."""
    found = []
    for process in psutil.process_iter(["cmdline", "name", "status", "create_time"]):
        line = " ".join(process.info["cmdline"] or []) + " " + (process.info["name"] or "")
        if process.info["status"] != psutil.STATUS_ZOMBIE and process.info["create_time"] >= since - 1 and (
                "ray::" in line or "/ray/core/src/ray/" in line or "raylet" in line or "gcs_server" in line):
            found.append(process)
    return found


@pytest.fixture(autouse=True)
def ray_test_start() -> float:
    """When the test began; after it, no Ray process it started may be left."""
    started = time.time()
    yield started
    deadline = time.time() + 30
    while ray_processes(started) and time.time() < deadline:
        time.sleep(0.5)
    left = ray_processes(started)
    for process in left:
        process.kill()
    assert not left, f"Ray processes left running: {[p.pid for p in left]}"


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ray_images") / "images"
    write_png_folder(folder, synthetic.synthetic_images(IMAGES, 240, seed=41))
    return folder


def encode_command(bundle: Path, images: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "nest_rt.cli", "encode", str(images), *MODELS, "--bundle", str(bundle),
            "--out", str(out), "--chunk-size", str(CHUNK), "--no-progress", "--threads", "1", *extra]


@pytest.fixture(scope="module")
def local_run(vit_bundle, images_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ray_local") / "run"
    subprocess.run(encode_command(vit_bundle, images_dir, out), check=True, capture_output=True, timeout=900)
    return out


def assert_same_files(run: Path, reference: Path) -> None:
    """The response files and their recorded sha256 equal the local run's; the records differ
    only in the engine (and paths)."""
    record, expected = (json.loads((folder / "run.json").read_text()) for folder in (run, reference))
    assert record["status"] == "complete" and record["identity"] == expected["identity"]
    for output, want in zip(record["outputs"], expected["outputs"]):
        for array, info in output["arrays"].items():
            assert info["sha256"] == want["arrays"][array]["sha256"]
            assert (run / info["file"]).read_bytes() == (reference / info["file"]).read_bytes()


def progress_chunks(out: Path) -> int:
    try:
        return len(json.loads((out / "progress.json").read_text())["chunks_done"])
    except (OSError, ValueError, KeyError):
        return 0


def wait_for_chunks(out: Path, driver: subprocess.Popen, count: int) -> None:
    deadline = time.time() + 600
    while progress_chunks(out) < count:
        assert driver.poll() is None, driver.communicate()
        assert time.time() < deadline, "no chunk finished in 10 minutes"
        time.sleep(0.05)


def assert_resumes_to_local_run(command: list[str], out: Path, local_run: Path, chunks_done_at_least: int) -> None:
    """An interrupted run kept its finished chunks, and the same command does only the rest and
    ends with the local run's files."""
    done = progress_chunks(out)
    assert chunks_done_at_least <= done < IMAGES // CHUNK
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    assert f"{IMAGES // CHUNK - done} of {IMAGES // CHUNK} chunks to do" in result.stdout + result.stderr
    assert_same_files(out, local_run)


def test_ray_run_equals_a_local_run(vit_bundle, images_dir, local_run, tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(encode_command(vit_bundle, images_dir, out, "--engine", "ray", "--workers", "2"),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    assert_same_files(out, local_run)
    engine = json.loads((out / "run.json").read_text())["engine"]
    assert engine["kind"] == "ray" and engine["workers"] == 2 and engine["address"] == "local"


def test_a_killed_worker_has_its_chunk_redone(vit_bundle, images_dir, local_run, tmp_path, ray_test_start):
    out = tmp_path / "run"
    driver = subprocess.Popen(encode_command(vit_bundle, images_dir, out, "--engine", "ray", "--workers", "2"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_chunks(out, driver, 1)
    deadline = time.time() + 60
    while True:  # a worker in the middle of a chunk (its process title names the method it runs)
        busy = [p for p in ray_processes(ray_test_start) if "_ChunkWorker.encode" in " ".join(p.cmdline())]
        if busy or time.time() > deadline:
            break
        time.sleep(0.02)
    assert busy, "no worker found encoding a chunk"
    busy[0].kill()
    killed_at = progress_chunks(out)
    stdout, stderr = driver.communicate(timeout=900)
    assert driver.returncode == 0, stderr
    assert killed_at < IMAGES // CHUNK, "the run finished before the worker was killed: the test proves nothing"
    assert "Ray: a worker was lost" in stdout + stderr and "is done again" in stdout + stderr
    assert_same_files(out, local_run)


def test_workers_that_cannot_start_stop_the_run_with_their_error(vit_bundle, images_dir, tmp_path):
    """fp16 runs on the CUDA provider only: every worker's models fail to load (the driver, which
    only plans the files, loads them in fp32 on the CPU); the run stops with the workers' reason
    instead of waiting for them, and stops its Ray (checked by ray_test_start)."""
    out = tmp_path / "run"
    result = subprocess.run(encode_command(vit_bundle, images_dir, out, "--engine", "ray", "--workers", "2",
                                           "--device", "cpu", "--precision", "fp16"),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    reason = "InvalidParameterError: precision='fp16' runs on the CUDA provider only"
    assert f"no Ray worker is left, the last failed with: nest_rt.errors.{reason}" in result.stderr
    assert "File " not in result.stdout + result.stderr  # the reason, not the worker's traceback
    assert "could not start" in result.stdout + result.stderr


@pytest.mark.parametrize("where", ["--ray-address", "RAY_ADDRESS"])
def test_a_cluster_address_that_does_not_answer_is_refused_before_the_run_folder_is_made(bundle_dir, images_dir,
                                                                                         tmp_path, where):
    """Ray alone retries such an address for about 12 minutes, and the run had written its folder."""
    import socket
    with socket.socket() as unused:  # a port nothing listens on: bound, never listening
        unused.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{unused.getsockname()[1]}"
        out = tmp_path / "run"
        command = [sys.executable, "-m", "nest_rt.cli", "encode", str(images_dir), "--bundle", str(bundle_dir),
                   "--model", "fwrf:roi=V1", "--out", str(out), "--no-progress", "--engine", "ray"]
        env = {**os.environ, "RAY_ADDRESS": address}
        if where == "--ray-address":
            command += ["--ray-address", address]
            env.pop("RAY_ADDRESS")
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    named = f"--ray-address {address}" if where == "--ray-address" else f"RAY_ADDRESS={address}"
    assert result.returncode == 2 and result.stderr.startswith(f"nest-rt encode: {named}: no Ray cluster answers "
                                                                "there (Connection refused)"), result.stderr
    assert len(result.stderr.splitlines()) == 1 and not out.exists()


def test_more_gpus_per_worker_than_the_cluster_has_is_refused(vit_bundle, images_dir, tmp_path):
    result = subprocess.run(encode_command(vit_bundle, images_dir, tmp_path / "run", "--engine", "ray",
                                           "--gpus-per-worker", "1"), capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "--gpus-per-worker 1, but the Ray cluster has 0 GPUs" in result.stderr, \
        result.stderr


def test_a_killed_driver_resumes(vit_bundle, images_dir, local_run, tmp_path, ray_test_start):
    out = tmp_path / "run"
    command = encode_command(vit_bundle, images_dir, out, "--engine", "ray", "--workers", "1")
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_chunks(out, driver, 2)
    driver.send_signal(signal.SIGKILL)
    driver.communicate()
    # Ray's own agents of the killed driver's local instance outlive it (README: `ray stop`
    # removes them); what nest_rt's run started stops with it, checked after the resumed run
    time.sleep(2)
    for process in ray_processes(ray_test_start):
        process.kill()
    assert_resumes_to_local_run(command, out, local_run, chunks_done_at_least=2)


@pytest.mark.parametrize("signal_number, exit_code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_driver_stops_its_ray_and_resumes(vit_bundle, images_dir, local_run, tmp_path, signal_number,
                                                         exit_code):
    """Ctrl-C or SIGTERM: the driver stops its workers and its local Ray instance (the autouse
    fixture finds no Ray process left), exits as a local run does, and the same command resumes."""
    out = tmp_path / "run"
    command = encode_command(vit_bundle, images_dir, out, "--engine", "ray", "--workers", "1")
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_chunks(out, driver, 1)
    driver.send_signal(signal_number)
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == exit_code, stderr
    assert "Traceback" not in stderr
    assert_resumes_to_local_run(command, out, local_run, chunks_done_at_least=1)


def test_a_two_node_cluster_run_equals_a_local_run(vit_bundle, images_dir, local_run, tmp_path):
    """``ray start --head`` and a second ``ray start --address`` node on 127.0.0.1, one CPU each (token
    authentication, as Ray's default, with a token of this test's own): two workers, one per node;
    then ``ray stop``."""
    import secrets
    ray_cli = str(Path(sys.executable).with_name("ray"))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    port = "6391"
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    try:
        subprocess.run([ray_cli, "start", "--head", f"--port={port}", "--include-dashboard=false", *common],
                       check=True, capture_output=True, env=env, timeout=180)
        subprocess.run([ray_cli, "start", f"--address=127.0.0.1:{port}", *common], check=True, capture_output=True,
                       env=env, timeout=180)
        out = tmp_path / "run"
        result = subprocess.run(encode_command(vit_bundle, images_dir, out, "--engine", "ray", "--workers", "2",
                                               "--ray-address", f"127.0.0.1:{port}"),
                                capture_output=True, text=True, env=env, timeout=900)
        assert result.returncode == 0, result.stderr
        assert "on a cluster of 2 CPUs" in result.stdout
        assert_same_files(out, local_run)
        assert json.loads((out / "run.json").read_text())["engine"]["address"] == f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, env=env, timeout=180)


def test_a_workers_own_error_stops_the_run_as_locally_and_skipping_matches_too(vit_bundle, images_dir, tmp_path):
    """An image that fails to decode inside a worker (not a dead worker: Ray must not retry it)
    stops the run with the local run's message and exit code, finished chunks kept; with
    --skip-bad-images the run resumes and its files and rejected list equal a local run's."""
    import shutil
    folder = tmp_path / "photos"
    shutil.copytree(images_dir, folder)
    data = (folder / "image5.png").read_bytes()
    (folder / "image5.png").write_bytes(data[:len(data) * 2 // 3])  # the header still reads

    def command(out: Path, *extra: str) -> list[str]:
        line = encode_command(vit_bundle, folder, out, *extra)
        eeg = line.index("eeg:subjects=1")
        del line[eeg - 1:eeg + 1]  # fwRF alone: quicker, and the same path through the workers
        return line

    outcomes = {}
    for name, extra in (("local", ()), ("ray", ("--engine", "ray", "--workers", "2"))):
        outcomes[name] = subprocess.run(command(tmp_path / name, *extra), capture_output=True, text=True, timeout=900)
        assert outcomes[name].returncode == 2 and "Traceback" not in outcomes[name].stderr, outcomes[name].stderr
        assert "image5.png" in outcomes[name].stderr and "--skip-bad-images" in outcomes[name].stderr
    assert outcomes["ray"].stderr.splitlines()[-1] == outcomes["local"].stderr.splitlines()[-1]
    assert progress_chunks(tmp_path / "ray") < IMAGES // CHUNK
    for name, extra in (("local", ()), ("ray", ("--engine", "ray", "--workers", "2"))):
        resumed = subprocess.run(command(tmp_path / name, *extra, "--skip-bad-images"), capture_output=True,
                                 text=True, timeout=900)
        assert resumed.returncode == 0, resumed.stderr
    assert_same_files(tmp_path / "ray", tmp_path / "local")
    rejected = [json.loads((tmp_path / name / "run.json").read_text())["inputs"]["rejected"] for name in ("ray", "local")]
    assert rejected[0] == rejected[1] and [Path(item["path"]).name for item in rejected[0]] == ["image5.png"]


def test_a_ray_run_on_another_runs_folder_is_refused(vit_bundle, images_dir, local_run, tmp_path):
    """The driver checks --out as a local run does, before any worker starts."""
    import shutil
    out = tmp_path / "run"
    shutil.copytree(local_run, out)
    command = encode_command(vit_bundle, images_dir, out, "--engine", "ray")
    command[command.index("eeg:subjects=1")] = "eeg:subjects=2"
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "holds a different run" in result.stderr, result.stderr


def test_ray_options_without_the_ray_engine_are_refused(vit_bundle, images_dir, tmp_path):
    result = subprocess.run(encode_command(vit_bundle, images_dir, tmp_path / "run", "--workers", "2"),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "need --engine ray" in result.stderr


@pytest.fixture
def ray_here():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_data_encoder_equals_encode(vit_bundle, ray_here):
    from nest_rt.ray import Encoder
    images = synthetic.synthetic_images(6, 240, seed=42)
    # an index column: Ray Data does not promise rows in their input order
    dataset = ray.data.from_items([{"index": i, "image": image} for i, image in enumerate(images.transpose(0, 2, 3, 1))])
    rows = dataset.map_batches(Encoder, fn_constructor_kwargs={"bundle": str(vit_bundle), "models": MODELS[1::2]},
                               concurrency=2, batch_size=4).take_all()
    rows.sort(key=lambda row: row["index"])
    nest = NEST(vit_bundle)
    fwrf = nest.encode(nest.get_encoding_model("fmri-nsd-fwrf", subject=1, selection={"roi": "V1"}), images,
                       return_metadata=False, show_progress=False)
    eeg = nest.encode(nest.get_encoding_model("eeg-things_eeg_2-vit_b_32", subject=1), images,
                      return_metadata=False, show_progress=False)
    assert [row["index"] for row in rows] == list(range(6))
    assert set(rows[0]) == {"index", "fmri-nsd-fwrf_sub-01_roi-V1", "eeg-things_eeg_2-vit_b_32_sub-01"}
    np.testing.assert_array_equal(np.stack([r["fmri-nsd-fwrf_sub-01_roi-V1"] for r in rows]), fwrf)
    np.testing.assert_array_equal(np.stack([r["eeg-things_eeg_2-vit_b_32_sub-01"] for r in rows]), eeg)


def test_ray_data_encoder_on_read_images(vit_bundle, images_dir, ray_here):
    from nest_rt.ray import Encoder
    dataset = ray.data.read_images(str(images_dir), mode="RGB", include_paths=True)
    rows = dataset.map_batches(Encoder, fn_constructor_kwargs={"bundle": str(vit_bundle), "models": ["fwrf:roi=V1"]},
                               concurrency=1, batch_size=8).take_all()
    by_path = {Path(r["path"]).name: r["fmri-nsd-fwrf_sub-01_roi-V1"] for r in rows}
    names = sorted(by_path, key=lambda name: int(name.removeprefix("image").removesuffix(".png")))
    assert len(names) == IMAGES
    nest = NEST(vit_bundle)
    expected = nest.encode(nest.get_encoding_model("fmri-nsd-fwrf", subject=1, selection={"roi": "V1"}),
                           [str(images_dir / name) for name in names], return_metadata=False, show_progress=False)
    np.testing.assert_array_equal(np.stack([by_path[name] for name in names]), expected)
