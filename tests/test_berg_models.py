"""BERG's ViT-B/32 models: the current EEG format (one PCA per repetition, pickled PCA objects or
dicts), MEG (training splits), THINGS fMRI and the Utah array (TVSD), the BERG API and encode runs.

The toolkit comes from export/synthetic_berg.py, whose file paths are written from upstream's
documentation (not read from models_manifest.json), and every expected response from
tests/berg_reference.py: scikit-learn objects and upstream's selection rules, written apart from
nest_rt. The backbone is the real ViT-B/32 architecture with random weights; heads have 8 PCA
components instead of 250 (the count does not change the code path), every output size is the
real one. Tolerance end to end: export/parity.py END_TO_END_TOLERANCE['vit_b_32'] (relative error
<= 1e-5 and correlation per output >= 0.99999 at S = 256, where nothing is resized; <= 1e-3 and
>= 0.9999 for resized images), as for the NEST models.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from berg_reference import upstream_features, upstream_responses

from nest_rt import BERG, NEST, BERGError, NESTError
from nest_rt.runs import RunInputs, encode_run
from nest_rt_export import exporter, synthetic, synthetic_berg, synthetic_vit, toolkit
from nest_rt_export.errors import ExportError
from nest_rt_export.parity import END_TO_END_TOLERANCE, compare, within

from conftest import assert_nest_error, count_backbone_calls, quiet, write_png_folder

EEG, MEG = "eeg-things_eeg_2-vit_b_32", "meg-things_meg_1-vit_b_32"
THINGS_FMRI, TVSD = "fmri-things_fmri_1-vit_b_32", "utah_array-tvsd-vit_b_32"
SEED = 7


@pytest.fixture(scope="module")
def berg_toolkit(tmp_path_factory) -> Path:
    """EEG subject 1 (PCA objects, float32) and 2 (PCA dicts, float64 regression); MEG subject 1
    with all five splits and subject 2 in the older one-file naming; THINGS fMRI subject 2;
    both TVSD monkeys."""
    root = tmp_path_factory.mktemp("berg_toolkit")
    synthetic_berg.write_berg_toolkit(root, eeg_subjects=[1], eeg_pca_form="object", meg_subjects=[1],
                                      things_fmri_subjects=[2], tvsd_subjects=["N", "F"], components=8, seed=SEED)
    # the same seed writes the same ViT weights, so both calls share one backbone
    synthetic_berg.write_berg_toolkit(root, eeg_subjects=[2], eeg_pca_form="dict", meg_subjects=[2],
                                      meg_unsplit=True, components=8, seed=SEED, coef_dtype="float64")
    return root


@pytest.fixture(scope="module")
def berg_bundle(berg_toolkit, tmp_path_factory) -> Path:
    return exporter.export_bundle(berg_toolkit, tmp_path_factory.mktemp("berg_bundle") / "bundle",
                                  vit_weights=berg_toolkit / synthetic_vit.VIT_WEIGHTS_NAME, log=quiet)


@pytest.fixture(scope="module")
def berg(berg_bundle) -> BERG:
    return BERG(berg_bundle)


@pytest.fixture(scope="module")
def features(berg_toolkit):
    cache = {}

    def get(images):
        key = (images.shape, images.tobytes()[:64], int(images.sum()))
        if key not in cache:
            cache[key] = upstream_features(berg_toolkit / synthetic_vit.VIT_WEIGHTS_NAME, images)
        return cache[key]
    return get


def assert_parity(expected, got, size):
    assert got.dtype == np.float32 and got.shape == expected.shape and np.isfinite(got).all()
    stats = compare(expected, got)
    assert within(stats, END_TO_END_TOLERANCE["vit_b_32"]["native" if size == 256 else "resized"]), stats
    assert expected.reshape(len(expected), -1).std(axis=0).min() > 1e-3  # responses vary across images


CASES = [(EEG, 1, {}), (EEG, 2, {}), (MEG, 1, {}), (MEG, 1, {"train_split": "split3"}), (MEG, 2, {}),
         (THINGS_FMRI, 2, {}), (TVSD, "N", {}), (TVSD, "F", {})]


@pytest.mark.parametrize("size", [256, 224, 300])
@pytest.mark.parametrize("model_id, subject, variant", CASES)
def test_every_model_matches_upstream(berg, berg_toolkit, features, model_id, subject, variant, size):
    images = synthetic.synthetic_images(8, size, seed=size)  # correlations per output over 8 images
    model = berg.get_encoding_model(model_id, subject=subject, **variant)
    got = berg.encode(model, images, show_progress=False)
    expected = upstream_responses(berg_toolkit, model_id, subject, features(images),
                                  train_split=variant.get("train_split", "full"))
    assert_parity(expected, got, size)


def test_formats_are_detected_per_file_and_recorded(berg_bundle):
    manifest = json.loads((berg_bundle / "bundle.json").read_text())
    eeg = manifest["models"][EEG]["graphs"]
    assert eeg["1"]["all"]["toolkit_format"]["pca_form"] == "scikit-learn PCA objects"
    assert eeg["2"]["all"]["toolkit_format"]["pca_form"] == "arrays"
    assert eeg["1"]["all"]["pca_blocks"] == 4 and eeg["1"]["all"]["toolkit_format"]["pca"] == "one per block"
    assert sorted(manifest["models"][MEG]["graphs"]["1"]) == ["full", "split1", "split2", "split3", "split4"]
    assert list(manifest["models"][MEG]["graphs"]["2"]) == ["full"]  # weights_P2.npy: the unsplit naming
    assert sorted(manifest["models"][TVSD]["graphs"]) == ["F", "N"]
    sidecar = json.loads((berg_bundle / manifest["models"][MEG]["graphs"]["1"]["split2"]["sidecar"]).read_text())
    assert sidecar["variant"] == "split2" and sidecar["outputs"] == 271 * 281


SELECTIONS = [
    (EEG, 1, {"channels": ["Oz", "O1", "Oz", "Fp1"], "timepoints": [0] * 20 + [1] * 30 + [0] * 90}, {}),
    (EEG, 2, {"timepoints": [1, 0] * 70}, {}),
    (MEG, 1, {"region": ["Occipital", "Temporal"]}, {}),
    (MEG, 1, {"sensors": ["MLO", "MZC"], "sensor_index": [1] * 10 + [0] * 261, "timepoints": [0, 1] * 140 + [1]},
     {"train_split": "split1"}),
    (MEG, 1, {"region": ["Frontal"], "sensors": ["MLF"]}, {"train_split": "single"}),
    (THINGS_FMRI, 2, {"roi": ["lFFA", "V1", "IT"]}, {}),
    (THINGS_FMRI, 2, {"roi": ["V2"], "voxel_index": [0] * 211000 + [1] * 339}, {}),
    (THINGS_FMRI, 2, {"voxel_index": [1] * 1000 + [0] * 210339}, {}),
    (TVSD, "F", {"roi": ["V4"]}, {}),
    (TVSD, "N", {"roi": ["IT", "V1"], "electrodes": [1] * 64 + [0] * 960, "timepoints": [1] * 100 + [0] * 200}, {}),
    (TVSD, "N", {"electrodes": [0, 1] * 512}, {}),
]


@pytest.mark.parametrize("model_id, subject, selection, variant", SELECTIONS)
def test_every_selection_kind_matches_upstream(berg, berg_toolkit, features, model_id, subject, selection,
                                               variant):
    images = synthetic.synthetic_images(8, 300, seed=11)
    kwargs = {"train_splits": "single"} if variant.get("train_split") == "single" else variant
    got = berg.encode(berg.get_encoding_model(model_id, subject=subject, selection=selection, **kwargs),
                      images, show_progress=False)
    expected = upstream_responses(berg_toolkit, model_id, subject, features(images), selection=selection,
                                  train_split=variant.get("train_split", "full"))
    assert_parity(expected, got, 300)
    full = berg.encode(berg.get_encoding_model(model_id, subject=subject, **kwargs), images, show_progress=False)
    assert got.size < full.size  # the selection shrank the work, not only the output


def test_meg_single_stacks_the_four_splits(berg):
    images = synthetic.synthetic_images(2, 256, seed=2)
    stacked = berg.encode(berg.get_encoding_model(MEG, subject=1, train_splits="single"), images,
                          show_progress=False)
    assert stacked.shape == (2, 4, 271, 281)
    for index in range(4):
        split = berg.encode(berg.get_encoding_model(MEG, subject=1, train_split=f"split{index + 1}"), images,
                            show_progress=False)
        np.testing.assert_array_equal(stacked[:, index], split)
    full = berg.encode(berg.get_encoding_model(MEG, subject=1, train_splits="all"), images, show_progress=False)
    np.testing.assert_array_equal(full, berg.encode(berg.get_encoding_model(MEG, subject=1), images,
                                                    show_progress=False))


def test_one_backbone_pass_per_batch_for_every_model(berg, monkeypatch):
    images = synthetic.synthetic_images(20, 256, seed=3)
    nest = berg._nest
    models = [nest.get_encoding_model(EEG, subject=1), nest.get_encoding_model(MEG, subject=1, train_splits="single"),
              nest.get_encoding_model(THINGS_FMRI, subject=2, selection={"roi": ["V1"]}),
              nest.get_encoding_model(TVSD, subject="F")]
    separate = [nest.encode(model=m, stimulus=images, show_progress=False) for m in models]
    calls = count_backbone_calls(nest, monkeypatch)
    together = berg.encode_many(models, images, show_progress=False)
    assert calls == [16, 4], "the backbone must run once per batch for all models"
    for a, b in zip(together, separate):
        np.testing.assert_array_equal(a, b)


def test_berg_api(berg, capsys):
    assert berg.list_models() == sorted(berg.list_models()) and TVSD in berg.list_models()
    catalog = berg.get_model_catalog()
    assert "MEG" in catalog and "utah_array" in catalog and "THINGS EEG2" in catalog["EEG"]
    card = berg.describe(MEG)
    assert card["model_id"] == MEG and card["parameters"]["train_split"][0] == "full"
    assert "271" in card["output"] and MEG in capsys.readouterr().out
    assert berg.get_model_variants(MEG) == ["full", "split1", "split2", "split3", "split4"]
    assert berg.get_model_variants(TVSD) == []
    # the names upstream's cards use: the THINGS fMRI id without underscore, 'P1', 'sub-02'
    assert berg.describe("fmri-things_fmri1-vit_b_32")["model_id"] == THINGS_FMRI
    model = berg.get_encoding_model("fmri-things_fmri1-vit_b_32", subject="sub-02", selection={"roi": "V1"})
    with berg.get_encoding_model(MEG, subject="P1", selection={"region": ["Occipital"]}) as meg:
        responses, metadata = berg.encode(meg, synthetic.synthetic_images(2, 224), return_metadata=True,
                                          show_progress=False)
    assert responses.shape[:2] == (2, int((np.asarray(metadata["sensors"]["sensor_regions"]) == "Occipital").sum()))
    assert model.subject == 2 and isinstance(berg.encode(model, synthetic.synthetic_images(1, 224),
                                                         show_progress=False), np.ndarray)
    metadata = berg.get_model_metadata(TVSD, subject="F")
    assert len(metadata["roi"]["roi_assignments"]) == 1024
    assert issubclass(BERGError, Exception) and BERGError is NESTError


@pytest.mark.parametrize("call, kind, words", [
    (lambda b: b.get_encoding_model(TVSD, subject=1), TypeError, ["subject must be a str", "'N', 'F'"]),
    (lambda b: b.get_encoding_model(TVSD, subject="X"), ValueError, ["subject='X'", "'N', 'F'"]),
    (lambda b: b.get_encoding_model(MEG, subject="F"), TypeError, ["subject must be an int", "[1, 2, 3, 4]"]),
    (lambda b: b.get_encoding_model(MEG, subject=5), ValueError, ["subject=5", "[1, 2, 3, 4]"]),
    (lambda b: b.get_encoding_model(MEG, subject=1, train_split="split9"), ValueError, ["train_split='split9'",
                                                                                        "split4"]),
    (lambda b: b.get_encoding_model(MEG, subject=2, train_split="split1"), ValueError, ["does not contain",
                                                                                        "subject 2"]),
    (lambda b: b.get_encoding_model(TVSD, subject="F", train_split="full"), ValueError, ["no training splits"]),
    (lambda b: b.get_encoding_model(MEG, subject=1, selection={"channels": ["Oz"]}), ValueError,
     ["'channels'", "region", "sensor_index"]),
    (lambda b: b.get_encoding_model(MEG, subject=1, selection={"region": ["Occipitl"]}), ValueError,
     ["Occipitl", "Occipital"]),
    (lambda b: b.get_encoding_model(MEG, subject=1, selection={"region": 3}), TypeError, ["selection['region']"]),
    (lambda b: b.get_encoding_model(MEG, subject=1, selection={"timepoints": [1] * 140}), ValueError,
     ["timepoints", "281"]),
    (lambda b: b.get_encoding_model(THINGS_FMRI, subject=2, selection={"roi": ["FFA"]}), ValueError,
     ["'FFA'", "lFFA"]),
    (lambda b: b.get_encoding_model(TVSD, subject="F", selection={"electrodes": [0] * 1024}), ValueError,
     ["electrodes", "selects nothing"]),
    (lambda b: b.get_encoding_model(EEG, subject=1, selection={"channels": ["Cz", "Xz"]}), ValueError,
     ["'Xz'"]),
    (lambda b: b.get_encoding_model("meg-things_meg_2-vit_b_32", subject=1), ValueError,
     ["meg-things_meg_2-vit_b_32", MEG]),
])
def test_bad_inputs_name_what_was_expected(berg, call, kind, words):
    assert_nest_error(lambda: call(berg), kind, words)


def test_a_weights_file_naming_another_class_is_refused(berg_toolkit, tmp_path):
    """Only the PCA class is read (as a stand-in that collects attributes); any other class in
    the file, scikit-learn's or not, is refused before it runs."""
    from sklearn.linear_model import LinearRegression
    path = toolkit.head_files(berg_toolkit, EEG, 1)["weights"]
    weights = np.load(path, allow_pickle=True).item()
    assert type(weights["pca_param"]["rep-1"]).__name__ == "PCA"  # real pickled PCA objects
    loaded, found = toolkit.load_head(berg_toolkit, EEG, 1)
    assert found["pca_form"] == "scikit-learn PCA objects"
    np.testing.assert_array_equal(loaded["pca_param"]["rep-3"]["components_"],
                                  weights["pca_param"]["rep-3"].components_)
    for name, hostile in [("regression", LinearRegression()), ("os", _Shell())]:
        weights["reg_param"]["rep-1"] = hostile
        target = tmp_path / name / path.relative_to(berg_toolkit)
        target.parent.mkdir(parents=True)
        np.save(target, weights, allow_pickle=True)
        with pytest.raises(toolkit.ToolkitError, match="refusing to unpickle"):
            toolkit.load_head(tmp_path / name, EEG, 1)


class _Shell:
    def __reduce__(self):
        return (shutil.rmtree, ("/nonexistent-nest-rt-test",))


def test_missing_files_are_export_errors(berg_toolkit, tmp_path):
    broken = tmp_path / "toolkit"
    shutil.copytree(berg_toolkit, broken)
    toolkit.head_files(broken, TVSD, "N")["metadata"].unlink()
    with pytest.raises(ExportError, match="toolkit files missing for subjects \\['N'\\].*metadata_monkeyN.npy"):
        exporter.export_bundle(broken, tmp_path / "bundle", models=[TVSD], subjects=["N"],
                               vit_weights=broken / synthetic_vit.VIT_WEIGHTS_NAME, log=quiet)
    path = toolkit.head_files(broken, THINGS_FMRI, 2)["weights"]
    weights = np.load(path, allow_pickle=True).item()
    del weights["reg_param"]["intercept_"]
    np.save(path, weights, allow_pickle=True)
    with pytest.raises(toolkit.ToolkitError, match="no regression coef_/intercept_ at 'reg_param'"):
        exporter.export_bundle(broken, tmp_path / "bundle2", models=["things_fmri"],
                               vit_weights=broken / synthetic_vit.VIT_WEIGHTS_NAME, log=quiet)


def test_encode_run_with_every_new_model(berg_bundle, tmp_path):
    folder = tmp_path / "images"
    stimulus = write_png_folder(folder, synthetic.synthetic_images(5, 240, seed=9))
    specs = ["meg:subjects=1:region=Occipital:train_split=full,split2", "meg:subjects=1:train_splits=single",
             "tvsd:subjects=F,N:roi=V4,V1+IT:timepoints=0-49", "things_fmri:subjects=2:roi=V1+lFFA",
             "eeg:subjects=1:channels=Oz,O1"]
    record = encode_run(berg_bundle, RunInputs([str(folder)]), specs, tmp_path / "out", imageset="set",
                        show_progress=False, log=lambda _: None)
    outputs = {o["name"]: o for o in record["outputs"]}
    assert len(outputs) == 2 + 1 + 4 + 1 + 1
    nest = NEST(berg_bundle)
    checks = [("meg-things_meg_1-vit_b_32_sub-01_train-split-split2_sel-", MEG, 1,
               {"region": ["Occipital"]}, {"train_split": "split2"}),
              ("meg-things_meg_1-vit_b_32_sub-01_train-splits-single", MEG, 1, None, {"train_splits": "single"}),
              ("utah_array-tvsd-vit_b_32_sub-N_roi-V1+IT_sel-", TVSD, "N",
               {"roi": ["V1", "IT"], "timepoints": [1] * 50 + [0] * 250}, {}),
              ("fmri-things_fmri_1-vit_b_32_sub-02_roi-V1+lFFA", THINGS_FMRI, 2, {"roi": ["V1", "lFFA"]}, {})]
    for prefix, model_id, subject, selection, variant in checks:
        (name,) = [n for n in outputs if n.startswith(prefix)]
        written = np.load(tmp_path / "out" / outputs[name]["arrays"]["responses"]["file"])
        expected = nest.encode(model=nest.get_encoding_model(model_id, subject=subject, selection=selection,
                                                             **variant), stimulus=stimulus, show_progress=False)
        np.testing.assert_array_equal(written, expected)
    tvsd = next(o for n, o in outputs.items() if n.startswith("utah_array-tvsd-vit_b_32_sub-F_roi-V4"))
    assert len(tvsd["axes"]["times"]) == 50 and tvsd["axes"]["times"][0] == pytest.approx(-0.1)
    meg = next(o for n, o in outputs.items() if n.startswith("meg-things_meg_1-vit_b_32_sub-01_train-splits"))
    assert meg["axes"]["splits"] == 4 and len(meg["axes"]["sensors"]) == 271 and meg["axes"]["sensors"][0] == "MLC11"
    from nest_rt.plots import plot_run
    drawn = plot_run(tmp_path / "out", tmp_path / "plots", outputs=[tvsd["name"], meg["name"]], images=[0, 1])
    assert len(drawn) == 4 and all(path.stat().st_size > 10_000 for path in drawn)
