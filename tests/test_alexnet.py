"""BERG's AlexNet encoders, trained and untrained: EEG (one PCA per repetition, as pickled PCA
objects or as dicts) and fsaverage, on a second backbone beside the ViT-B/32's.

The toolkit comes from export/synthetic_berg.py; every expected response from
tests/berg_reference.py, whose AlexNet is torchvision's, built and run as upstream's loaders do
(the untrained one seeded there, not by the exporter's code). The trained backbone is a random
state dict with conv1 scaled up (activations far above a default initialisation's, as trained
weights give), the untrained one upstream's seeded default initialisation: the graphs are checked
at two scales. Heads have 8 PCA components instead of 250; every output size is the real one.
Tolerance end to end: export/parity.py END_TO_END_TOLERANCE['alexnet'] (relative error <= 1e-5
and correlation per output >= 0.99999 at S = 256, where nothing is resized; <= 2e-3 and >= 0.9999
for resized images, where the resize's 1-grey-level differences propagate).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from berg_reference import alexnet_extractor, upstream_alexnet, upstream_alexnet_features, upstream_responses

from nest_rt import BERG, catalog
from nest_rt.runs import RunInputs, encode_run
from nest_rt_export import backbones, exporter, synthetic, synthetic_berg, synthetic_vit
from nest_rt_export.backbones.alexnet import weights_checksum
from nest_rt_export.parity import END_TO_END_TOLERANCE, compare, within

from conftest import assert_nest_error, count_backbone_calls, quiet, write_png_folder

EEG, EEG_UNTRAINED = "eeg-things_eeg_2-alexnet", "eeg-things_eeg_2-alexnet_untrained"
FSAVERAGE, FSAVERAGE_UNTRAINED = "fmri-nsd_fsaverage-alexnet", "fmri-nsd_fsaverage-alexnet_untrained"
VIT_EEG = "eeg-things_eeg_2-vit_b_32"
SEED = 5


@pytest.fixture(scope="module")
def alexnet_toolkit(tmp_path_factory) -> Path:
    """Both backbones: EEG subject 1 (PCA objects, float32 regressions), EEG subject 2 (PCA dicts,
    float64 regressions), fsaverage subject 1; and one ViT-B/32 EEG subject for mixed runs."""
    root = tmp_path_factory.mktemp("alexnet_toolkit")
    synthetic_berg.write_berg_toolkit(root, eeg_subjects=[1], alexnet_eeg_subjects=[1],
                                      alexnet_fsaverage_subjects=[1], eeg_pca_form="object", components=8, seed=SEED)
    # the same seed writes the same AlexNet weights, so both calls share one trained backbone
    synthetic_berg.write_berg_toolkit(root, alexnet_eeg_subjects=[2], eeg_pca_form="dict", components=8, seed=SEED,
                                      coef_dtype="float64")
    return root


@pytest.fixture(scope="module")
def alexnet_bundle(alexnet_toolkit, tmp_path_factory) -> Path:
    return exporter.export_bundle(alexnet_toolkit, tmp_path_factory.mktemp("alexnet_bundle") / "bundle",
                                  vit_weights=alexnet_toolkit / synthetic_vit.VIT_WEIGHTS_NAME,
                                  alexnet_weights=alexnet_toolkit / synthetic_berg.ALEXNET_WEIGHTS_NAME, log=quiet)


@pytest.fixture(scope="module")
def berg(alexnet_bundle) -> BERG:
    return BERG(alexnet_bundle)


@pytest.fixture(scope="module")
def networks(alexnet_toolkit) -> dict:
    return {"alexnet": alexnet_extractor(upstream_alexnet(alexnet_toolkit / synthetic_berg.ALEXNET_WEIGHTS_NAME)),
            "alexnet_untrained": alexnet_extractor(upstream_alexnet(None))}


@pytest.fixture(scope="module")
def features(networks):
    cache = {}

    def get(model_id: str, images: np.ndarray) -> np.ndarray:
        network = model_id.split("-")[-1]
        key = (network, images.shape, images.tobytes()[:64], int(images.sum()))
        if key not in cache:
            cache[key] = upstream_alexnet_features(networks[network], images)
        return cache[key]
    return get


def assert_parity(expected, got, size):
    for want, have in zip(expected if isinstance(expected, tuple) else (expected,),
                          got if isinstance(got, tuple) else (got,)):
        assert have.dtype == np.float32 and have.shape == want.shape and np.isfinite(have).all()
        if want.size == 0:
            continue
        stats = compare(want, have)
        assert within(stats, END_TO_END_TOLERANCE["alexnet"]["native" if size == 256 else "resized"]), stats
        assert want.reshape(len(want), -1).std(axis=0).min() > 1e-3  # responses vary across images


CASES = [(EEG, 1), (EEG, 2), (EEG_UNTRAINED, 1), (EEG_UNTRAINED, 2), (FSAVERAGE, 1), (FSAVERAGE_UNTRAINED, 1)]


@pytest.mark.parametrize("size", [256, 224, 300])
@pytest.mark.parametrize("model_id, subject", CASES)
def test_every_alexnet_model_matches_upstream(berg, alexnet_toolkit, features, model_id, subject, size):
    images = synthetic.synthetic_images(8, size, seed=size)  # correlations per output over 8 images
    got = berg.encode(berg.get_encoding_model(model_id, subject=subject), images, show_progress=False)
    expected = upstream_responses(alexnet_toolkit, model_id, subject, features(model_id, images))
    assert_parity(expected, got, size)


SELECTIONS = [
    (EEG, 1, {"channels": ["Oz", "O1", "Oz", "Fp1"], "timepoints": [0] * 20 + [1] * 30 + [0] * 90}),
    (EEG_UNTRAINED, 2, {"timepoints": [1, 0] * 70}),
    (FSAVERAGE, 1, {"roi": "nsdgeneral"}),
    (FSAVERAGE_UNTRAINED, 1, {"roi": "OWFA"}),
    (FSAVERAGE_UNTRAINED, 1, {"roi": "V2d"}),  # empty in the left hemisphere
    (FSAVERAGE, 1, {"lh_vertices": [1] * 5000 + [0] * 158842}),
    (FSAVERAGE_UNTRAINED, 1, {"lh_vertices": [0, 1] * 81921, "rh_vertices": [0] * 163000 + [1] * 842}),
]


@pytest.mark.parametrize("model_id, subject, selection", SELECTIONS)
def test_every_selection_matches_upstream(berg, alexnet_toolkit, features, model_id, subject, selection):
    images = synthetic.synthetic_images(8, 300, seed=11)
    got = berg.encode(berg.get_encoding_model(model_id, subject=subject, selection=selection), images,
                      show_progress=False)
    expected = upstream_responses(alexnet_toolkit, model_id, subject, features(model_id, images),
                                  selection=selection)
    assert_parity(expected, got, 300)


def test_a_list_of_rois_selects_their_union(berg, alexnet_toolkit, features):
    """Upstream silently uses the first ROI of a list; nest_rt selects the vertices of all of
    them (sorted, each once), which upstream gives for the same vertices as masks."""
    images = synthetic.synthetic_images(8, 300, seed=12)
    metadata = np.load(alexnet_toolkit / "encoding_models/modality-fmri/train_dataset-nsd_fsaverage"
                       "/model-alexnet_untrained/metadata/metadata_subject-01.npy", allow_pickle=True).item()["fmri"]
    masks = {}
    for hemisphere in ("lh", "rh"):
        mask = np.zeros(163842, dtype=int)
        for roi in ("OWFA", "V1v", "nsdgeneral"):
            mask[metadata[f"{hemisphere}_fsaverage_rois"][roi]] = 1
        masks[f"{hemisphere}_vertices"] = mask
    got = berg.encode(berg.get_encoding_model(FSAVERAGE_UNTRAINED, subject=1,
                                              selection={"roi": ["OWFA", "V1v", "nsdgeneral"]}),
                      images, show_progress=False)
    expected = upstream_responses(alexnet_toolkit, FSAVERAGE_UNTRAINED, 1, features(FSAVERAGE_UNTRAINED, images),
                                  selection=masks)
    assert_parity(expected, got, 300)


def test_ovwfa_as_the_card_names_it_is_owfa(berg):
    """Upstream's card lists 'OVWFA', its metadata holds 'OWFA' (upstream fails on the card's
    name); both names select the same vertices here."""
    images = synthetic.synthetic_images(2, 224, seed=4)
    card_name, metadata_name = (berg.encode(berg.get_encoding_model(FSAVERAGE, subject=1, selection={"roi": name}),
                                            images, show_progress=False) for name in ("OVWFA", "OWFA"))
    for a, b in zip(card_name, metadata_name):
        np.testing.assert_array_equal(a, b)


def _backbone_features(bundle: Path, name: str, images: np.ndarray) -> np.ndarray:
    graph = json.loads((bundle / "bundle.json").read_text())["backbones"][name]["graph"]
    return ort.InferenceSession(str(bundle / graph), providers=["CPUExecutionProvider"]).run(
        None, {"images": images})[0]


def test_untrained_backbone_is_upstreams_seeded_alexnet(alexnet_bundle, networks):
    """The bundle's untrained backbone gives the features of ``torch.manual_seed(20200220);
    alexnet(weights=None)`` built fresh here, and bundle.json says which torch drew them."""
    images = synthetic.synthetic_images(4, 256, seed=8)
    fresh = upstream_alexnet_features(alexnet_extractor(upstream_alexnet(None)), images)
    untrained = _backbone_features(alexnet_bundle, "alexnet_untrained", images)
    stats = compare(fresh, untrained)
    assert stats["relative_error"] <= 1e-5 and stats["min_correlation"] >= 0.99999, stats
    trained = _backbone_features(alexnet_bundle, "alexnet", images)
    assert compare(fresh, trained)["relative_error"] > 0.5  # the trained backbone's weights are others
    assert np.abs(trained).max() > 10 * np.abs(untrained).max()  # and its scale too
    record = json.loads((alexnet_bundle / "bundle.json").read_text())["backbones"]
    assert record["alexnet_untrained"]["weights"]["torch"] == torch.__version__
    assert "manual_seed(20200220)" in record["alexnet_untrained"]["weights"]["source"]
    assert record["alexnet_untrained"]["weights"]["weights_sha256"] == weights_checksum(upstream_alexnet(None))
    assert record["alexnet"]["weights"]["weights_sha256"] != record["alexnet_untrained"]["weights"]["weights_sha256"]


def test_building_the_untrained_backbone_keeps_the_callers_random_state():
    """Upstream's loader reseeds the global torch generator; the exporter's does not."""
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    backbones.get("alexnet_untrained").network(None)
    assert torch.equal(before, torch.random.get_rng_state())


def test_formats_are_detected_per_file(alexnet_bundle):
    manifest = json.loads((alexnet_bundle / "bundle.json").read_text())
    for model_id in (EEG, EEG_UNTRAINED):
        graphs = manifest["models"][model_id]["graphs"]
        assert graphs["1"]["all"]["toolkit_format"]["pca_form"] == "scikit-learn PCA objects"
        assert graphs["2"]["all"]["toolkit_format"]["pca_form"] == "arrays"
        assert graphs["1"]["all"]["pca_blocks"] == 4 and graphs["1"]["all"]["backbone"] == model_id.split("-")[-1]
    assert manifest["models"][FSAVERAGE]["graphs"]["1"]["all"]["pca_blocks"] == 1
    assert sorted(manifest["backbones"]) == ["alexnet", "alexnet_untrained", "vit_b_32"]
    recommended = {name: json.loads((alexnet_bundle / entry["sidecar"]).read_text())["contract"]["recommended_batch"]
                   for name, entry in manifest["backbones"].items()}
    assert recommended == {name: catalog.backbone(name).images_per_call for name in recommended}, "as the runtime runs"


def test_streamed_chunks_follow_each_backbones_features():
    """The images whose features are kept while heads stream come from a byte budget set so
    that ViT-B/32 (460,800 features per image) keeps 256: a smaller backbone gets more images, a
    larger one fewer, never none."""
    from nest_rt.encode_loop import streamed_chunk_size
    assert streamed_chunk_size(460_800) == 256
    assert streamed_chunk_size(205_672) == 573  # AlexNet
    assert streamed_chunk_size(1_000_000) == 117
    assert streamed_chunk_size(10**9) == 1
    assert streamed_chunk_size(460_800 + 205_672) == 176, "a chunk keeps the features of every backbone in use"


def test_each_backbone_runs_once_per_batch_in_a_mixed_run(berg, monkeypatch):
    """ViT and AlexNet models together: images decoded once per batch, each backbone run once
    per batch for all the models on it, in calls of the size the catalog gives for it."""
    images = synthetic.synthetic_images(20, 256, seed=3)
    nest = berg._nest
    models = [nest.get_encoding_model(VIT_EEG, subject=1), nest.get_encoding_model(EEG, subject=1),
              nest.get_encoding_model(FSAVERAGE, subject=1, selection={"roi": "V1v"}),
              nest.get_encoding_model(EEG_UNTRAINED, subject=2),
              nest.get_encoding_model(FSAVERAGE_UNTRAINED, subject=1)]
    separate = [nest.encode(model=m, stimulus=images, show_progress=False) for m in models]
    calls = {model_id: count_backbone_calls(nest, monkeypatch, model_id) for model_id in (VIT_EEG, EEG, EEG_UNTRAINED)}
    together = berg.encode_many(models, images, show_progress=False)
    assert [nest._backbone(m).batch_size for m in (VIT_EEG, EEG, EEG_UNTRAINED)] == [
        catalog.backbone(name).images_per_call for name in ("vit_b_32", "alexnet", "alexnet_untrained")] == [16, 16, 16]
    assert calls == {VIT_EEG: [16, 4], EEG: [16, 4], EEG_UNTRAINED: [16, 4]}
    for a, b in zip(together, separate):
        for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            np.testing.assert_array_equal(x, y)


def test_berg_api_lists_and_describes_the_four_models(berg):
    listed = berg.list_models()
    assert {EEG, EEG_UNTRAINED, FSAVERAGE, FSAVERAGE_UNTRAINED} <= set(listed)
    card = berg.describe(EEG_UNTRAINED)
    assert card["model_id"] == EEG_UNTRAINED and "63" in card["output"] and "140" in card["output"]
    assert "roi" in berg.describe(FSAVERAGE)["parameters"]["selection"]
    assert "nsdgeneral" in catalog.rois(FSAVERAGE_UNTRAINED)  # the AlexNet card's ROI list
    metadata = berg.get_model_metadata(FSAVERAGE_UNTRAINED, subject=1)
    assert "lh_correlation_nsdcore" in metadata["encoding_models"]
    model = berg.get_encoding_model("eeg-alexnet_untrained", subject=2, selection={"channels": ["Oz"]})
    assert berg.encode(model, synthetic.synthetic_images(1, 224), show_progress=False).shape == (1, 4, 1, 140)


@pytest.mark.parametrize("call, kind, words", [
    (lambda b: b.get_encoding_model(EEG, subject=11), ValueError, ["subject=11", "[1, 2, 3"]),
    (lambda b: b.get_encoding_model(FSAVERAGE_UNTRAINED, subject="1"), TypeError, ["subject must be an int"]),
    (lambda b: b.get_encoding_model(EEG_UNTRAINED, subject=1, selection={"channels": ["Cz", "Xz"]}), ValueError,
     ["'Xz'"]),
    (lambda b: b.get_encoding_model(EEG, subject=1, selection={"timepoints": [1] * 139}), ValueError,
     ["timepoints", "140"]),
    (lambda b: b.get_encoding_model(FSAVERAGE, subject=1, selection={"roi": "FFA"}), ValueError,
     ["'FFA'", "FFA-1"]),
    (lambda b: b.get_encoding_model(FSAVERAGE, subject=1, selection={"lh_vertices": [1] * 100}), ValueError,
     ["lh_vertices", "163842"]),
    (lambda b: b.get_encoding_model(FSAVERAGE, subject=2), ValueError, ["subject 2"]),
    (lambda b: b.get_encoding_model("eeg-things_eeg_2-alexnet_untraind", subject=1), ValueError,
     ["alexnet_untraind", EEG_UNTRAINED]),
])
def test_bad_inputs_name_what_was_expected(berg, call, kind, words):
    assert_nest_error(lambda: call(berg), kind, words)


def test_bad_images_are_refused_as_for_every_model(berg):
    model = berg.get_encoding_model(EEG_UNTRAINED, subject=1)
    assert_nest_error(lambda: berg.encode(model, np.zeros((2, 3, 224, 200), np.uint8)), ValueError,
                      ["square"])
    assert_nest_error(lambda: berg.encode(model, np.zeros((2, 3, 224, 224), np.float32)), TypeError, ["uint8"])


def test_encode_run_with_the_alexnet_models(alexnet_bundle, tmp_path):
    """nest-rt encode's run: short names, subjects, ROI and channel selections, beside a ViT model."""
    from nest_rt import NEST
    folder = tmp_path / "images"
    stimulus = write_png_folder(folder, synthetic.synthetic_images(5, 240, seed=9))
    specs = ["eeg-alexnet:subjects=1,2:channels=Oz,O1", "fsaverage-alexnet_untrained:subjects=1:roi=nsdgeneral",
             "eeg-alexnet_untrained:subjects=1", "eeg:subjects=1"]
    record = encode_run(alexnet_bundle, RunInputs([str(folder)]), specs, tmp_path / "out", imageset="set",
                        show_progress=False, log=lambda _: None)
    outputs = {o["name"]: o for o in record["outputs"]}
    assert len(outputs) == 2 + 1 + 1 + 1
    nest = NEST(alexnet_bundle)
    checks = [(f"{EEG}_sub-02_sel-", EEG, 2, {"channels": ["Oz", "O1"]}, "responses"),
              (f"{FSAVERAGE_UNTRAINED}_sub-01_roi-nsdgeneral", FSAVERAGE_UNTRAINED, 1, {"roi": "nsdgeneral"}, "rh"),
              (f"{EEG_UNTRAINED}_sub-01", EEG_UNTRAINED, 1, None, "responses")]
    for prefix, model_id, subject, selection, array in checks:
        (name,) = [n for n in outputs if n.startswith(prefix)]
        written = np.load(tmp_path / "out" / outputs[name]["arrays"][array]["file"])
        expected = nest.encode(model=nest.get_encoding_model(model_id, subject=subject, selection=selection),
                               stimulus=stimulus, show_progress=False)
        np.testing.assert_array_equal(written, expected[1] if array == "rh" else expected)


def test_command_line_from_synthetic_toolkit_to_responses(tmp_path):
    """nest-rt synthetic-toolkit -> export --berg-dir -> encode, for an AlexNet model alone."""
    import subprocess
    import sys

    def cli(*args):
        result = subprocess.run([sys.executable, "-m", "nest_rt.cli", *args], capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stderr
        return result
    toolkit_dir, bundle = tmp_path / "toolkit", tmp_path / "bundle"
    made = cli("synthetic-toolkit", "--out", str(toolkit_dir), "--models", "eeg-alexnet", "eeg-alexnet_untrained",
               "--subjects", "3", "--components", "4")
    assert "--weights alexnet=" in made.stdout
    for backbone in ("alexnet", "alexnet_untrained"):
        assert (toolkit_dir / f"encoding_models/modality-eeg/train_dataset-things_eeg_2/model-{backbone}/"
                "encoding_models_weights/weights_subject-03.npy").is_file()
    cli("export", "--berg-dir", str(toolkit_dir), "--out", str(bundle), "--models", "eeg-alexnet_untrained")
    images = synthetic.synthetic_images(3, 230, seed=1)
    np.save(tmp_path / "images.npy", images)
    cli("encode", str(tmp_path / "images.npy"), "--bundle", str(bundle), "--model",
        "eeg-alexnet_untrained:subjects=3:channels=Oz", "--out", str(tmp_path / "out"), "--no-progress")
    (written,) = (tmp_path / "out").rglob("*.npy")
    berg = BERG(bundle)
    expected = berg.encode(berg.get_encoding_model(EEG_UNTRAINED, subject=3, selection={"channels": ["Oz"]}),
                           images, show_progress=False)
    np.testing.assert_array_equal(np.load(written), expected)
