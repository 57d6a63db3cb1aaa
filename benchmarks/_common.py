"""Helpers shared by the benchmark scripts (bench_fwrf.py, bench_vit.py).

Only the standard library is imported at module level: nest_rt workers import this file and
must never pull in torch. Everything here is about *how* to measure (fresh worker processes,
peak RSS, an idle CPU, the GEMM ceiling), not about any one model.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULT_PREFIX = "BENCH-RESULT "
GEMM_SIZES = (2048, 4096)
GEMM_REPEATS = 5


def worker_env(threads: int) -> dict:
    """Both libraries get the same threads; the BLAS variables keep numpy's GEMM comparable."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "OPENBLAS_NUM_THREADS": str(threads)}


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# -- memory of the current process ---------------------------------------------------------------
def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def proc_status_mb(field: str, pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def encode_in_process(command: list[str]) -> tuple[float, dict, Path]:
    """``nest-rt encode`` in this process, so that its peak RSS is this process's, into a fresh
    ``--out``: its wall time, its run record and the output folder (the caller removes it)."""
    import shutil

    from nest_rt.cli import main
    out = Path(command[command.index("--out") + 1])
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    code = main(command)
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"nest-rt encode failed with exit code {code}")
    return wall, json.loads((out / "run.json").read_text()), out


def current_rss_mb() -> float:
    return proc_status_mb("VmRSS")


def emit_result(result: dict) -> None:
    """Print a worker's result line. Peak memory is read last, so that it covers the whole run.
    ru_maxrss keeps the launching process's peak across fork/exec, which is why the parent
    stays small; VmHWM (this image only) cross-checks it."""
    result["peak_rss_mb"] = peak_rss_mb()
    result["vm_hwm_mb"] = proc_status_mb("VmHWM")
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# -- the GEMM ceiling ------------------------------------------------------------------------------
def worker_gemm(threads: int) -> dict:
    """float32 GEMM GFLOP/s at ``threads`` threads: the practical ceiling of this CPU."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    results = {}
    for size in GEMM_SIZES:
        flops = 2 * size ** 3
        a_np = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
        b_np = np.random.default_rng(1).standard_normal((size, size), dtype=np.float32)
        a_torch, b_torch = torch.from_numpy(a_np), torch.from_numpy(b_np)
        results[f"torch_{size}"] = _gflops(lambda: torch.mm(a_torch, b_torch), flops)
        results[f"numpy_{size}"] = _gflops(lambda: a_np @ b_np, flops)
    return {"gflops": results}


def _gflops(multiply, flops: int) -> dict:
    multiply()  # warm-up: thread pools, page faults of the output
    seconds = []
    for _ in range(GEMM_REPEATS):
        start = time.perf_counter()
        multiply()
        seconds.append(time.perf_counter() - start)
    rates = [flops / s / 1e9 for s in seconds]
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}


def gemm_ceiling(run_worker) -> tuple[dict, float, float]:
    """(rates, ceiling, other CPU share) from a 'gemm' worker started with ``run_worker``."""
    run = run_worker("gemm")
    gemm = run["gflops"]
    ceiling = max(result["median"] for result in gemm.values())
    details = ", ".join(f"{name} {rate['median']:.1f}" for name, rate in gemm.items())
    log(f"GEMM ceiling {ceiling:.1f} GFLOP/s ({details}; "
        f"{100 * run['other_cpu_share']:.0f} % CPU used by other processes)")
    return gemm, ceiling, run["other_cpu_share"]


# -- setup caches ----------------------------------------------------------------------------------
def exporter_source_sha256() -> str:
    """The exporter's source: part of every setup cache key, so that a changed exporter is
    never measured on a stale bundle."""
    import hashlib
    import nest_rt_export
    digest = hashlib.sha256()
    for source in sorted(Path(nest_rt_export.__file__).parent.glob("*.py")):
        digest.update(source.name.encode() + source.read_bytes())
    return digest.hexdigest()


def image_file(work_dir: Path, count: int, size: int, seed: int) -> Path:
    """uint8 [count, 3, size, size]; one file per count so a worker loads exactly what it encodes."""
    path = work_dir / f"images_{count}x{size}_seed{seed}.npy"
    if not path.is_file():
        import numpy as np
        from nest_rt_export.synthetic import synthetic_images
        log(f"generating {count} synthetic {size}x{size} images (once)")
        partial = path.with_suffix(".partial.npy")
        np.save(partial, synthetic_images(count, size, seed=seed))
        partial.rename(path)
    return path


# -- worker processes ------------------------------------------------------------------------------
def worker_main(argv: list[str], workers: dict, options: list[str]) -> None:
    """A worker process: ``--worker KIND --option value ...`` -> one result line on stdout."""
    parser = argparse.ArgumentParser(description="internal: one measurement")
    parser.add_argument("--worker", choices=sorted(workers), required=True)
    for option in options:
        parser.add_argument(option)
    args = parser.parse_args(argv)
    emit_result(workers[args.worker](args))


def default_output(args, result_file: Path) -> None:
    """Where the raw JSON goes: --output, else the results file (``*_quick.json`` for --quick,
    so that a smoke test never overwrites the real results)."""
    if args.output is None:
        args.output = result_file.with_name(result_file.stem + "_quick.json") if args.quick else result_file


# -- running workers -------------------------------------------------------------------------------
def run_worker(script: Path, kind: str, threads: int, show_log: bool = False, **options) -> dict:
    """Run ``script --worker kind --option value ...`` in a fresh process once the CPU is idle;
    returns its result line plus wall time, seconds waited and other processes' CPU share."""
    command = [sys.executable, str(script), "--worker", kind]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, **worker_env(threads)}
    waited = wait_for_quiet_cpu()
    started, busy_before, own_before = time.perf_counter(), machine_busy_s(), children_cpu_s()
    completed = subprocess.run(command, stdout=subprocess.PIPE, stderr=None if show_log else subprocess.PIPE,
                               text=True, env=env, cwd=REPO_ROOT)
    lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"worker {kind} {options} failed (exit {completed.returncode}):\n"
                           f"{(completed.stderr or '')[-4000:]}")
    result = json.loads(lines[-1][len(RESULT_PREFIX):])
    wall = time.perf_counter() - started
    # CPU time the machine spent on anything but this worker: other load skews the timings.
    other_cpu = (machine_busy_s() - busy_before) - (children_cpu_s() - own_before)
    result.update(worker_wall_s=wall, waited_for_quiet_cpu_s=waited,
                  other_cpu_share=max(0.0, other_cpu) / (wall * (os.cpu_count() or 1)))
    return result


def machine_busy_s() -> float:
    """Non-idle CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as stat:
        user, nice, system, idle, iowait, irq, softirq, steal = map(int, stat.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet_cpu(limit_s: float = 300, window_s: float = 2, quiet_share: float = 0.1) -> float:
    """Wait (up to limit_s) until other processes leave the CPU idle; returns seconds waited."""
    started, warned = time.perf_counter(), False
    while time.perf_counter() - started < limit_s:
        busy_before = machine_busy_s()
        time.sleep(window_s)
        share = (machine_busy_s() - busy_before) / (window_s * (os.cpu_count() or 1))
        if share < quiet_share:
            break
        if not warned:
            log(f"other processes use {100 * share:.0f} % of the CPU; waiting for them (up to {limit_s:.0f} s)")
            warned = True
    return time.perf_counter() - started


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- reporting -------------------------------------------------------------------------------------
def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def git_state() -> dict:
    """The commit measured, and whether the runtime or export code had uncommitted changes."""
    def git(*arguments):
        completed = subprocess.run(["git", *arguments], capture_output=True, text=True, cwd=REPO_ROOT)
        return completed.stdout.strip() if completed.returncode == 0 else None
    return {"commit": git("rev-parse", "HEAD"),
            "uncommitted": (git("status", "--porcelain", "--", "nest_rt", "export") or "").splitlines()}


def environment(threads: int, packages=("nest-rt", "onnxruntime", "torch", "torchvision", "numpy")) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "versions": versions, "threads": threads,
            "git": git_state()}
