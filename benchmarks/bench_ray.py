"""``nest-rt encode --engine ray`` vs a local ``nest-rt encode`` of the same run on this machine.

    python benchmarks/bench_ray.py            # ~15 min on 2 cores once bench_cli's setup exists; writes results/ray.json
    python benchmarks/bench_ray.py --cases eeg_local eeg_ray   # rerun some, update ray.json

Cases (2,000 JPEG files of 425 x 425 from bench_cli's setup, every run a fresh process, one run
per case since each lasts minutes):
- fwRF, subject 1, five ROIs (V1, V2, V3, hV4, FFA-1) and EEG, all ten subjects: locally with
  ``--threads 2``, and with ``--engine ray --workers 1 --threads 2`` (one worker holding the
  machine's two cores, so the difference is Ray's overhead: starting Ray and the worker, shipping
  chunks and responses through the object store) and ``--workers 2 --threads 1``.
- baseline: the peak memory of nest_rt's imports in a plain process and in a Ray worker (what a
  Ray worker costs before any model).
- EEG subject 1 and fsaverage subject 1 alone on the first 500 files, locally: with the EEG run
  above they split a ViT run into backbone and head costs for the on-paper estimate.
While a Ray run goes, a thread of the driver reads the peak resident memory (VmHWM) of every Ray
worker process and the summed RSS of Ray's own processes (raylet, GCS, agents).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import log  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULT_FILE = REPO_ROOT / "benchmarks" / "results" / "ray.json"
THREADS = 2
FWRF_ROIS = ["V1", "V2", "V3", "hV4", "FFA-1"]
PART_FILES = 500


# -- the memory of Ray's processes, sampled from the driver ---------------------------------------
class RayMemorySampler(threading.Thread):
    """Twice a second: each Ray worker's VmHWM (its peak so far) and the summed RSS of Ray's
    other processes. A worker's last reading is its peak up to half a second before it ends."""

    def __init__(self):
        super().__init__(daemon=True)
        self.worker_peak_mb: dict[int, float] = {}
        self.ray_processes_peak_mb = 0.0
        self.stopping = threading.Event()

    def run(self):
        import psutil
        while not self.stopping.wait(0.5):
            system_rss = 0.0
            for process in psutil.process_iter(["cmdline", "name"]):
                try:
                    line = " ".join(process.info["cmdline"] or []) + " " + (process.info["name"] or "")
                    if "_ChunkWorker" in line:
                        self.worker_peak_mb[process.pid] = _common.proc_status_mb("VmHWM", process.pid)
                    elif "ray::" in line or "/ray/" in line or "raylet" in line or "gcs_server" in line:
                        system_rss += process.memory_info().rss / 2**20
                except (psutil.Error, OSError):
                    continue  # it ended while being read
            self.ray_processes_peak_mb = max(self.ray_processes_peak_mb, system_rss)


# -- the worker: nest-rt encode in process ---------------------------------------------------------
def worker_encode(args) -> dict:
    sampler = RayMemorySampler()
    sampler.start()
    try:
        wall, record, out = _common.encode_in_process(json.loads(args.command))
    finally:
        sampler.stopping.set()
        sampler.join()
    files = {array["file"]: array["sha256"] for output in record["outputs"] for array in output["arrays"].values()}
    output_bytes = sum((out / name).stat().st_size for name in files)
    shutil.rmtree(out)
    return {"wall_s": wall, "images": record["inputs"]["count"], "outputs": len(record["outputs"]),
            "sha256": files, "output_bytes": output_bytes,
            "ray_worker_peak_mb": sorted(sampler.worker_peak_mb.values()),
            "ray_processes_peak_mb": sampler.ray_processes_peak_mb}


IMPORT_AND_REPORT = ("import nest_rt.runs, onnxruntime, PIL.Image\n"
                     "print(next(int(l.split()[1]) / 1024 for l in open('/proc/self/status') if l.startswith('VmHWM:')))")


def worker_baseline(args) -> dict:
    """What a process costs before any model: nest_rt's imports in a plain Python process and
    in a Ray worker (an actor that runs the same lines), peak resident memory of each."""
    import subprocess

    import ray
    plain = float(subprocess.run([sys.executable, "-c", IMPORT_AND_REPORT], capture_output=True, text=True,
                                 check=True).stdout)

    @ray.remote
    class Idle:
        def report(self) -> float:
            scope: dict = {}
            import contextlib
            import io
            with contextlib.redirect_stdout(io.StringIO()) as printed:
                exec(IMPORT_AND_REPORT, scope)
            return float(printed.getvalue())

    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        in_ray = ray.get(Idle.remote().report.remote())
    finally:
        ray.shutdown()
    return {"wall_s": 1.0, "images": 0, "plain_process_mb": plain, "ray_worker_mb": in_ray}


WORKERS = {"encode": worker_encode, "baseline": worker_baseline}


def encode_command(inputs: str, bundle: str, model: str, name: str, *extra: str, threads: int = THREADS) -> str:
    out = REPO_ROOT / "benchmarks" / "results" / "work_ray" / f"out_{name}"
    return json.dumps(["encode", inputs, "--bundle", bundle, "--model", model, "--threads", str(threads),
                       "--out", str(out), "--no-progress", *extra])


def cases(paths: dict) -> dict:
    rois = ",".join(FWRF_ROIS)
    first_part = str(Path(paths["folder"]) / "image_00[0-4]??.jpg")
    plan = {}
    for family, bundle, model in (("fwrf", paths["fwrf_bundle"], f"fwrf:subjects=1:roi={rois}"),
                                  ("eeg", paths["eeg_bundle"], "eeg:subjects=all")):
        plan[f"{family}_local"] = encode_command(paths["folder"], bundle, model, f"{family}_local")
        plan[f"{family}_ray"] = encode_command(paths["folder"], bundle, model, f"{family}_ray",
                                               "--engine", "ray", "--workers", "1")
        plan[f"{family}_ray_2x1"] = encode_command(paths["folder"], bundle, model, f"{family}_ray_2x1",
                                                   "--engine", "ray", "--workers", "2", threads=1)
    plan["baseline"] = None  # the memory of a Ray worker before any model (worker_baseline)
    plan["eeg1_local_part"] = encode_command(first_part, paths["eeg_bundle"], "eeg:subjects=1", "eeg1")
    plan["fsaverage1_local_part"] = encode_command(first_part, paths["eeg_bundle"], "fsaverage:subjects=1", "fs1")
    return plan


# -- the on-paper estimate -------------------------------------------------------------------------
UPSTREAM_IMAGES = 73_000 + 50_000 + 26_107  # NSD + ImageNet val + THINGS, upstream's precomputed sets
FWRF_ENCODERS = 8 * (21 + 2 * 2)  # NSD subjects x (single-file ROIs + two split ROIs of two encoders)
EEG_SUBJECTS, FSAVERAGE_SUBJECTS = 10, 8


def estimate(results: dict) -> dict:
    """CPU-seconds per image of every NEST model at 2 threads, from the local runs (model loading
    included, so slightly high): fwRF per encoder from the five-ROI run; the ViT backbone and an
    EEG head from the one- and ten-subject runs; an fsaverage head from its run minus the backbone."""
    per_image = {name: results[name]["wall_s"] / results[name]["images"] for name in results
                 if isinstance(results[name], dict) and results[name].get("images")}
    fwrf_encoder = per_image["fwrf_local"] / len(FWRF_ROIS)
    eeg_head = (per_image["eeg_local"] - per_image["eeg1_local_part"]) / (EEG_SUBJECTS - 1)
    backbone = per_image["eeg1_local_part"] - eeg_head
    fsaverage_head = per_image["fsaverage1_local_part"] - backbone
    seconds = {"fwrf": FWRF_ENCODERS * fwrf_encoder, "vit_backbone": backbone, "eeg_heads": EEG_SUBJECTS * eeg_head,
               "fsaverage_heads": FSAVERAGE_SUBJECTS * fsaverage_head}
    per_image_s = sum(seconds.values())
    cpu_hours = per_image_s * UPSTREAM_IMAGES / 3600
    return {"per_image_s_at_2_threads": seconds, "per_image_s": per_image_s, "images": UPSTREAM_IMAGES,
            "two_core_worker_hours": cpu_hours,
            "hours_on_workers": {workers: cpu_hours / workers for workers in (1, 8, 32, 128)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", help="run only these cases and update them in ray.json")
    args = parser.parse_args()
    import bench_cli
    paths = bench_cli.run("setup")  # bench_cli's files, toolkits and bundles (built once, cached)
    plan = cases(paths)
    unknown = set(args.cases or []) - set(plan)
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}; cases: {sorted(plan)}")
    results = json.loads(RESULT_FILE.read_text()) if args.cases and RESULT_FILE.is_file() else {}
    environment = _common.environment(THREADS, packages=("nest-rt", "onnxruntime", "ray", "numpy"))
    for name in args.cases or plan:
        if name == "baseline":
            results[name] = _common.run_worker(Path(__file__).resolve(), "baseline", THREADS)
            log(f"baseline: nest_rt imported in a plain process {results[name]['plain_process_mb']:.0f} MB, "
                f"in a Ray worker {results[name]['ray_worker_mb']:.0f} MB")
            continue
        result = _common.run_worker(Path(__file__).resolve(), "encode", THREADS, command=plan[name])
        results[name] = result | {"git": environment["git"], "images_per_s": result["images"] / result["wall_s"]}
        log(f"{name}: {result['images']} images in {result['wall_s']:.1f} s, driver peak {result['vm_hwm_mb']:.0f} MB, "
            f"Ray workers {[round(m) for m in result['ray_worker_peak_mb']]} MB")
    for family in ("fwrf", "eeg"):
        local = results.get(f"{family}_local")
        for variant in ("ray", "ray_2x1"):
            ray_run = results.get(f"{family}_{variant}")
            if local and ray_run:
                ray_run["overhead"] = ray_run["wall_s"] / local["wall_s"] - 1
                ray_run["same_files_as_local"] = ray_run["sha256"] == local["sha256"]
    if all(name in results for name in ("fwrf_local", "eeg_local", "eeg1_local_part", "fsaverage1_local_part")):
        results["estimate"] = estimate(results)
    results["environment"] = environment
    RESULT_FILE.write_text(json.dumps(results, indent=1, default=str))
    log(f"written to {RESULT_FILE}")
    for name, result in results.items():
        if isinstance(result, dict) and "wall_s" in result and result["images"]:
            extra = f", overhead {100 * result['overhead']:+.1f} %" if "overhead" in result else ""
            log(f"{name:>22}: {result['images']:>5} images, {result['wall_s']:7.1f} s, {result['images_per_s']:6.2f} img/s, "
                f"driver {result['vm_hwm_mb']:.0f} MB, workers {[round(m) for m in result['ray_worker_peak_mb']]} MB, "
                f"Ray's processes {result['ray_processes_peak_mb']:.0f} MB{extra}")
    if "estimate" in results:
        log(json.dumps(results["estimate"], indent=1))


if __name__ == "__main__":
    if "--worker" in sys.argv:
        _common.worker_main(sys.argv[1:], WORKERS, ["--command"])
    else:
        main()
