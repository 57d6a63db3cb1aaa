"""CUDA checks and GPU timings (issue 14), prepared on the CPU, to run on the lent GPU machine.

    python benchmarks/gpu_check.py --out DIR [--work /tmp/gpu_work]  # on the GPU machine
    python benchmarks/gpu_check.py --out DIR --device cpu --quick    # dry run on any machine

benchmarks/README.md ("GPU") says how onnxruntime-gpu gets onto the GPU machine and which device
commands run this.

``--quick`` uses a small toolkit (16 PCA components, 2 EEG subjects, 24 images); the full run uses
the real 250 components, ten EEG subjects and 500 images. Every step writes DIR/gpu_results.json
when it ends, and a step that fails records its error and lets the next one run, so that a run cut
short by the machine's time limit still returns what it measured. Steps:

1. environment: onnxruntime's providers (after ``onnxruntime.preload_dlls()``, which loads the CUDA
   libraries of the nvidia pip packages), what ``device='auto'`` picks, the card;
2. a synthetic toolkit (fwRF V1 and lateral at their real voxel counts, EEG in both formats,
   fsaverage, MEG, Utah array, THINGS fMRI) exported with the fp16 backbone;
3. parity of every model: the CUDA provider against the CPU provider, and against the torch
   reference (upstream's maths: fwrf_torch, the ViT-B/32's backbone file, tests/berg_reference.py) run on the card;
4. fp16: ``precision='fp16'`` on CUDA against fp32 per output, beside the fidelity the export recorded;
5. IO binding: a head's batch with its weights bound on the device once, and with numpy inputs
   (copied to the device on every call);
6. ``device='auto'`` with CUDA hidden (CUDA_VISIBLE_DEVICES=''), in a child process: what it says;
7. throughput and GPU memory: upstream's way (torch fp32 on the card, batch 100, scikit-learn
   heads) against nest_rt fp32 and fp16 over a sweep of batch sizes, for fwRF V1 and lateral, EEG
   one subject, EEG ten subjects (``encode_many``) and fsaverage all vertices.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))  # berg_reference.py, the upstream-style reference

EEG, FSAVERAGE = "eeg-things_eeg_2-vit_b_32", "fmri-nsd_fsaverage-vit_b_32"
MEG, TVSD, THINGS_FMRI = "meg-things_meg_1-vit_b_32", "utah_array-tvsd-vit_b_32", "fmri-things_fmri_1-vit_b_32"
NEW_FORMAT_EEG_SUBJECT = 9  # written in current BERG's format (one PCA per repetition)
SEED = 3


class Results:
    """gpu_results.json, rewritten after every step."""

    def __init__(self, out: Path):
        self.path, self.data = out / "gpu_results.json", {"steps": {}}

    def step(self, name: str, function, *args):
        started = time.perf_counter()
        print(f"[gpu_check] {name} ...", flush=True)
        try:
            self.data["steps"][name] = {"result": function(*args), "ok": True}
        except Exception:  # noqa: BLE001  (a failed step is recorded; the next one still runs)
            self.data["steps"][name] = {"ok": False, "error": traceback.format_exc()[-3000:]}
        self.data["steps"][name]["seconds"] = time.perf_counter() - started
        self.path.write_text(json.dumps(self.data, indent=1, default=str))
        print(f"[gpu_check] {name}: {'ok' if self.data['steps'][name]['ok'] else 'FAILED'} "
              f"({self.data['steps'][name]['seconds']:.0f} s)", flush=True)
        return self.data["steps"][name].get("result")


def environment(device: str) -> dict:
    import onnxruntime as ort
    import torch
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None and device == "cuda":
        preload()
    from nest_rt.sessions import resolve_device
    return {"onnxruntime": ort.__version__, "providers": ort.get_available_providers(),
            "auto_device": resolve_device("auto"), "torch": torch.__version__,
            "card": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def setup(work: Path, quick: bool) -> dict:
    from nest_rt_export import exporter, synthetic, synthetic_berg, synthetic_vit
    components, eeg_subjects = (16, [1, 2]) if quick else (250, list(range(1, 11)))
    toolkit = work / "toolkit"
    synthetic.write_toolkit(toolkit, subjects=[1], rois=["V1", "lateral"], seed=SEED)
    synthetic_vit.write_vit_toolkit(toolkit, eeg_subjects=eeg_subjects, fsaverage_subjects=[1],
                                    components=components, seed=SEED)
    synthetic_berg.write_berg_toolkit(toolkit, eeg_subjects=[NEW_FORMAT_EEG_SUBJECT], meg_subjects=[1],
                                      meg_variants=("full",), tvsd_subjects=["F"], things_fmri_subjects=[1],
                                      components=components, seed=SEED)  # same seed: same ViT weights
    exporter.export_bundle(toolkit, work / "bundle", vit_weights=toolkit / synthetic_vit.VIT_WEIGHTS_NAME,
                           precisions=("fp16",), overwrite=True, log=lambda message: None)
    return {"components": components, "eeg_subjects": eeg_subjects}


def parity_cases(eeg_subjects: list[int]) -> list[tuple[str, object, dict]]:
    return [("fmri-nsd-fwrf", 1, {"roi": "V1"}), ("fmri-nsd-fwrf", 1, {"roi": "lateral"}),
            (EEG, eeg_subjects[0], {}), (EEG, NEW_FORMAT_EEG_SUBJECT, {}), (FSAVERAGE, 1, {}),
            (MEG, 1, {}), (TVSD, "F", {}), (THINGS_FMRI, 1, {})]


def torch_reference(work: Path, model_id: str, subject, selection: dict, images: np.ndarray, device: str):
    """Upstream's maths in torch on ``device`` (the heads in scikit-learn on the CPU, as upstream)."""
    import torch
    from nest_rt_export import synthetic_vit, toolkit
    from nest_rt_export.fwrf_torch import FwrfReference, preprocess
    from head_responses import reference_fsaverage
    from nest_rt_export import backbones
    vit = backbones.get("vit_b_32")
    transform = vit.transform()
    tk = work / "toolkit"
    with torch.no_grad():
        if model_id == "fmri-nsd-fwrf":
            files = toolkit.fwrf_files(tk, subject, selection["roi"])["weights"]
            model = FwrfReference.from_checkpoints([toolkit.load_checkpoint(p) for p in files], subject).to(device)
            blocks = []
            for start in range(0, len(images), 100):
                x = preprocess(images[start:start + 100]).to(device)
                blocks.append(torch.cat([r(e(x)) for e, r in zip(model.encoders, model.readouts)], dim=1).cpu())
            return torch.cat(blocks).numpy()
        extractor = vit.reference(vit.network(tk / synthetic_vit.VIT_WEIGHTS_NAME)).to(device).eval()
        features = np.concatenate([extractor(transform(torch.from_numpy(images[s:s + 100])).to(device)).cpu().numpy()
                                   for s in range(0, len(images), 100)])
    if model_id == FSAVERAGE:
        weights, _ = toolkit.load_head(tk, FSAVERAGE, subject)
        return np.concatenate(reference_fsaverage(features, weights), axis=1)
    from berg_reference import upstream_responses
    return upstream_responses(tk, model_id, subject, features, selection)


def _flat(responses) -> np.ndarray:
    return np.concatenate(responses, axis=1) if isinstance(responses, tuple) else responses


def parity(work: Path, device: str, eeg_subjects: list[int], images: np.ndarray) -> dict:
    from nest_rt import NEST
    from nest_rt_export.parity import compare
    nest, found = NEST(work / "bundle"), {}
    for model_id, subject, selection in parity_cases(eeg_subjects):
        model = nest.get_encoding_model(model_id, subject=subject, selection=selection or None, device=device)
        on_device = _flat(nest.encode(model=model, stimulus=images, show_progress=False))
        on_cpu = _flat(nest.encode(model=model, stimulus=images, device="cpu", show_progress=False))
        reference = _flat(torch_reference(work, model_id, subject, selection, images, device))
        found[f"{model_id} {subject} {selection}"] = {"device_vs_cpu": compare(on_cpu, on_device),
                                                      "device_vs_torch_on_device": compare(reference, on_device)}
    return found


def fp16(work: Path, device: str, eeg_subjects: list[int], images: np.ndarray) -> dict:
    from nest_rt import NEST
    from nest_rt_export.parity import compare
    fp32, half = NEST(work / "bundle"), NEST(work / "bundle", precision="fp16")
    recorded = json.loads((work / "bundle" / "bundle.json").read_text())["backbones"]["vit_b_32"]["precisions"]
    found = {"recorded_at_export": recorded["fp16"]["fidelity_vs_fp32"]}
    for model_id, subject in ((EEG, eeg_subjects[0]), (FSAVERAGE, 1), (MEG, 1), (TVSD, "F")):
        model = half.get_encoding_model(model_id, subject=subject, device=device)
        assert model.backbone.precision == "fp16"
        found[f"{model_id} {subject}"] = compare(
            _flat(fp32.encode(model=fp32.get_encoding_model(model_id, subject=subject, device=device),
                              stimulus=images, show_progress=False)),
            _flat(half.encode(model=model, stimulus=images, show_progress=False)))
    return found


def io_binding(work: Path, device: str, eeg_subjects: list[int], images: np.ndarray) -> dict:
    """ms per head batch with the weights bound on the device once, and with numpy inputs."""
    from nest_rt import NEST, models
    nest = NEST(work / "bundle")
    model = nest.get_encoding_model(EEG, subject=eeg_subjects[0], device=device)
    batch, found = images[:model.batch_size], {}
    for label, bound in (("bound_once", {device}), ("numpy_each_call", set())):
        models._DEVICE_BOUND_WEIGHTS.clear()
        models._DEVICE_BOUND_WEIGHTS.update(bound)
        model.release_weights()
        shared: dict = {}
        model.run_batch(batch, device, shared)  # features cached in ``shared``: the head alone is timed
        seconds = []
        for _ in range(5):
            started = time.perf_counter()
            model.run_batch(batch, device, shared)
            seconds.append(time.perf_counter() - started)
        found[label] = {"ms_per_batch": 1000 * float(np.median(seconds)), "images": len(batch)}
    models._DEVICE_BOUND_WEIGHTS.clear()
    models._DEVICE_BOUND_WEIGHTS.add("cuda")
    return found


def hidden_cuda(work: Path) -> dict:
    code = ("from nest_rt import NEST\nn = NEST(%r)\n" % str(work / "bundle") +
            "print('auto ->', n.get_encoding_model('fmri-nsd-fwrf', subject=1, selection={'roi': 'V1'}).device)\n"
            "try:\n    n.get_encoding_model('fmri-nsd-fwrf', subject=1, selection={'roi': 'V1'}, device='cuda')\n"
            "except Exception as exc:\n    print(type(exc).__name__, exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    return {"stdout": done.stdout[-2000:], "stderr": done.stderr[-2000:]}


class GpuMemory:
    """Peak used memory of the card (nvidia-smi, every 0.2 s) while the block runs."""

    def __enter__(self):
        self.peak, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            try:
                text = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                      capture_output=True, text=True, timeout=5).stdout
                self.peak = max(self.peak, float(text.split()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return
            time.sleep(0.2)

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()


def throughput(work: Path, device: str, eeg_subjects: list[int], images: np.ndarray, partial: Path) -> dict:
    """Each case's row is also written to ``partial`` as soon as it is measured. Upstream's figure
    includes loading its models (as a fresh upstream run does, once per model); nest_rt's is
    measured after loading and one warm-up call."""
    from nest_rt import NEST, models
    cases = {"fwrf_V1": [("fmri-nsd-fwrf", 1, {"roi": "V1"})], "fwrf_lateral": [("fmri-nsd-fwrf", 1, {"roi": "lateral"})],
             "eeg_1": [(EEG, eeg_subjects[0], {})], "eeg_all": [(EEG, s, {}) for s in eeg_subjects],
             "fsaverage_all": [(FSAVERAGE, 1, {})]}
    found = {}
    for case, requested in cases.items():
        row = {}
        started = time.perf_counter()
        with GpuMemory() as memory:
            for model_id, subject, selection in requested:  # upstream: one run per model
                torch_reference(work, model_id, subject, selection, images, device)
        row["upstream"] = {"images_per_s": len(images) / (time.perf_counter() - started),
                           "gpu_memory_mb": memory.peak}
        for precision in ("fp32", "fp16") if device == "cuda" else ("fp32",):  # fp16 is refused on the CPU
            if requested[0][0] == "fmri-nsd-fwrf" and precision == "fp16":
                continue  # the fp16 variant is the ViT backbone's
            for vit_batch, head_batch, fwrf_batch in ((16, 64, 32), (64, 64, 64), (128, 128, 128), (256, 256, 256)):
                models.HEAD_BATCH, models._MAX_BATCH = head_batch, fwrf_batch
                models.LinearEncodingModel.batch_size = head_batch
                nest = NEST(work / "bundle", precision=precision)
                loaded = [nest.get_encoding_model(m, subject=s, selection=sel or None, device=device)
                          for m, s, sel in requested]
                for backbone in nest._backbones.values():  # images per backbone call, as swept
                    backbone.batch_size = vit_batch
                nest.encode_many(loaded, images[:2], show_progress=False)
                with GpuMemory() as memory:
                    started = time.perf_counter()
                    nest.encode_many(loaded, images, show_progress=False)
                    seconds = time.perf_counter() - started
                row[f"nest_rt_{precision}_batches_{vit_batch}_{head_batch}_{fwrf_batch}"] = {
                    "images_per_s": len(images) / seconds, "gpu_memory_mb": memory.peak}
                del nest, loaded
        found[case] = row
        partial.write_text(json.dumps(found, indent=1))
    return found


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--work", type=Path, help="toolkit and bundle (GBs; default OUT/work): keep it out of "
                                                  "the device tool's $OUT, whose files all travel back")
    parser.add_argument("--steps", nargs="+", default=["environment", "setup", "parity", "fp16", "io_binding",
                                                       "hidden_cuda", "throughput"])
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = Results(args.out)
    from nest_rt.demo import synthetic_images
    results.data["config"] = {"device": args.device, "quick": args.quick}
    work = args.work or args.out / "work"
    images = synthetic_images(24 if args.quick else 500, 425, seed=SEED)
    probe = images[:16]
    config = {"eeg_subjects": [1, 2] if args.quick else list(range(1, 11))}
    for name in args.steps:
        if name == "environment":
            results.step(name, environment, args.device)
        elif name == "setup":
            config = results.step(name, setup, work, args.quick) or config
        elif name == "hidden_cuda":
            results.step(name, hidden_cuda, work)
        elif name == "throughput":
            results.step(name, throughput, work, args.device, config["eeg_subjects"], images,
                         args.out / "throughput_partial.json")
        else:
            results.step(name, globals()[name], work, args.device, config["eeg_subjects"], probe)


if __name__ == "__main__":
    main(sys.argv[1:])
