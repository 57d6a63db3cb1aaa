"""``nest-rt demo``: images encoded to responses on a machine that has no NEST toolkit yet.

Two ways, chosen by what is installed:

- with the export extra (torch): a synthetic toolkit of all three model families (random weights
  in upstream's file formats and sizes) is exported, with every graph checked against the torch
  reference, and generated images are encoded by every family;
- without it (``pip install 'nest-rt[demo]'``: the runtime plus onnx, no torch): a demo bundle
  of fwRF models with random weights is built directly, unchecked, and the images are encoded
  by it. This shows the runtime, the command line and the output files; the responses mean
  nothing.

Either way the images go through ``nest-rt encode`` (resumable run files in upstream's layout).
"""
from __future__ import annotations

import importlib
import importlib.util
import shlex
import shutil
import sys
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from . import catalog
from .errors import InvalidParameterError, MissingExtraError

EXPORT_MODULES = ("torch", "torchvision", "onnx", "sklearn")
DEMO_COMPONENTS = 250  # as the real toolkit files: 461 MB of PCA weights per ViT subject


def missing(modules) -> list[str]:
    return [name for name in modules if importlib.util.find_spec(name) is None]


def run_demo(out: Path, nest_dir: Path | None, rois: list[str], images: int, runtime_only: bool = False,
             weights: dict[str, Path] | None = None, log: Callable[[str], None] = print) -> dict:
    from .run_files import RUN_RECORD
    from .runs import RunInputs, encode_run
    with_export = not runtime_only and not missing(EXPORT_MODULES)
    if nest_dir is not None and not with_export:
        raise MissingExtraError("demo --nest-dir exports your toolkit, which needs the export extra "
                                f"({', '.join(missing(EXPORT_MODULES))} missing): pip install 'nest-rt[export]'")
    bundle_dir = out / "bundle"
    if with_export:
        specs = _export_demo(out, nest_dir, bundle_dir, rois, weights, log)
    else:
        specs = _runtime_only_demo(bundle_dir, rois, log)
    steps = 4 if with_export else 3
    image_dir = out / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(synthetic_images(images, 256, seed=7)):
        paths.append(image_dir / f"image_{index:03d}.png")
        Image.fromarray(image.transpose(1, 2, 0)).save(paths[-1])
    log(f"{steps - 1}/{steps} wrote {len(paths)} images (256 x 256 PNG) to {image_dir}")
    response_dir = out / "responses"
    if (response_dir / RUN_RECORD).is_file():  # the previous demo's run: replace it
        shutil.rmtree(response_dir)
    log(f"{steps}/{steps} encoding them with nest_rt (onnxruntime, no torch), as `nest-rt encode` does, "
        f"into {response_dir}")
    record = encode_run(bundle_dir, RunInputs([str(image_dir)]), specs, response_dir, imageset="demo",
                        log=lambda message: log("    " + message))
    for output in record["outputs"]:
        for array, info in output["arrays"].items():
            values = np.load(response_dir / info["file"], mmap_mode="r")
            log(f"    {output['name'] + ('' if array == 'responses' else f' ({array})')}: {values.shape} "
                f"{values.dtype}, mean {float(values.mean()):+.3f}, std {float(values.std()):.3f}")
    log(f"done. Files: {response_dir} (run.json lists them). Read them with numpy.load or "
        f"NEST.load_insilico_neural_responses.")
    if not with_export:
        log("This bundle's random graphs were not checked against torch. For EEG and fsaverage models and "
            "the exporter: install the export extra (torch), then run the demo again.")
    log(f"bundle: {bundle_dir}")
    log("next, for example:")
    for command in next_commands(bundle_dir, image_dir, response_dir, specs):
        log(f"    {command}")
    return record


def next_commands(bundle_dir: Path, image_dir: Path, response_dir: Path, specs: list[str]) -> list[str]:
    """Commands to paste after the demo, spelt with this interpreter's own ``nest-rt``, so that
    they work without an activated venv and never run another installation's copy."""
    nest_rt = nest_rt_command()
    bundle, images = shlex.quote(str(bundle_dir)), shlex.quote(str(image_dir))
    models = " ".join(f"--model {shlex.quote(spec)}" for spec in specs[:1])
    again = shlex.quote(str(response_dir.parent / "my_responses"))
    return [f"{nest_rt} list --bundle {bundle}",
            f"{nest_rt} plot {shlex.quote(str(response_dir))} --images 0 1",
            f"{nest_rt} encode {images} --bundle {bundle} {models} --out {again}"]


def nest_rt_command() -> str:
    """The ``nest-rt`` script installed beside this Python (a venv's bin/ or Scripts/ folder),
    else ``python -m nest_rt.cli`` with this interpreter."""
    interpreter = Path(sys.executable)
    for name in ("nest-rt", "nest-rt.exe"):
        script = interpreter.with_name(name)
        if script.is_file():
            return shlex.quote(str(script))
    return f"{shlex.quote(str(interpreter))} -m nest_rt.cli"


def _runtime_only_demo(bundle_dir: Path, rois: list[str], log) -> list[str]:
    if missing(["onnx"]):
        raise MissingExtraError("the torch-free demo builds its graphs with onnx: pip install 'nest-rt[demo]' "
                                "(or 'nest-rt[export]' for the full demo with torch)")
    demo_bundle = importlib.import_module("nest_rt_export.demo_bundle")
    log(f"1/3 building a demo bundle without torch (fwRF subject 1, ROIs {', '.join(rois)}; random weights, "
        f"not checked against torch) in {bundle_dir}")
    _replace(bundle_dir)
    demo_bundle.write_demo_bundle(bundle_dir, rois)
    return _encode_specs(bundle_dir, rois)


def _export_demo(out: Path, nest_dir: Path | None, bundle_dir: Path, rois: list[str], weights, log) -> list[str]:
    exporter = importlib.import_module("nest_rt_export.exporter")
    if nest_dir is None:
        synthetic = importlib.import_module("nest_rt_export.synthetic")
        synthetic_vit = importlib.import_module("nest_rt_export.synthetic_vit")
        nest_dir = out / "synthetic_toolkit"
        log(f"1/4 writing a synthetic toolkit to {nest_dir}: random weights in upstream's formats and sizes, "
            f"subject 1 of fMRI fwRF (ROIs {', '.join(rois)}), EEG and fMRI fsaverage (about 2 GB)")
        synthetic.write_toolkit(nest_dir, subjects=[1], rois=rois)
        synthetic_vit.write_vit_toolkit(nest_dir, eeg_subjects=[1], fsaverage_subjects=[1],
                                        components=DEMO_COMPONENTS)
        weights = {"vit_b_32": nest_dir / synthetic_vit.VIT_WEIGHTS_NAME}
    log(f"2/4 exporting to {bundle_dir} (every graph is checked against the torch reference)")
    _replace(bundle_dir)
    exporter.export_bundle(nest_dir, bundle_dir, subjects=[1], rois=rois, weights=weights,
                           log=lambda message: log("    " + message))
    return _encode_specs(bundle_dir, rois)


def _encode_specs(bundle_dir: Path, rois: list[str]) -> list[str]:
    """``--model`` specs of subject 1 of every model in the demo bundle, by short name in the
    catalog's order (the fwRF, with its ROIs, first)."""
    from .bundle import Bundle
    exported = Bundle(bundle_dir).manifest["models"]
    return [f"{entry.alias}:subjects=1" + ("" if entry.is_linear else f":roi={','.join(rois)}")
            for model_id, entry in catalog.models().items() if model_id in exported]


def _replace(bundle_dir: Path) -> None:
    """The demo's own earlier bundle is replaced; any other folder there is left alone."""
    if bundle_dir.exists():
        if not (bundle_dir / "bundle.json").is_file():
            raise InvalidParameterError(f"--out: {bundle_dir} exists and is not a bundle; choose another --out")
        shutil.rmtree(bundle_dir)


def synthetic_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    """uint8 [count, 3, size, size] images with large-scale structure, colour and texture
    (numpy and Pillow only: the demo, the tests and the export's checks all use them).

    Plain white noise would give nearly identical pooled features for every image; smooth
    random fields plus noise make responses vary across images as natural images do.
    """
    rng = np.random.default_rng(seed)
    images = np.empty((count, 3, size, size), dtype=np.uint8)
    for index in range(count):
        coarse = rng.integers(0, 256, size=(rng.integers(2, 9),) * 2 + (3,), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), np.float32)
        noise = rng.normal(0, rng.uniform(5, 40), size=smooth.shape)
        images[index] = np.clip(smooth + noise, 0, 255).astype(np.uint8).transpose(2, 0, 1)
    return images
