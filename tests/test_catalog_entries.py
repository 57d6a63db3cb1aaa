"""The models manifest is read into typed objects and checked when it is loaded: a malformed
entry fails at load naming its key's path, an absent optional key means the same everywhere,
and no code outside the catalog spells out a model id."""
from __future__ import annotations

import ast
import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from nest_rt import catalog
from nest_rt.api import _variant_parameters, _variants
from nest_rt.catalog_entries import ManifestError, parse_manifest
from nest_rt.errors import InvalidParameterError
from nest_rt.runs.model_specs import parse_model_spec

REPO = Path(__file__).resolve().parents[1]
PACKAGED = REPO / "nest_rt" / catalog.MANIFEST_NAME
MEG = "meg-things_meg_1-vit_b_32"


@pytest.fixture
def raw() -> dict:
    return json.loads(PACKAGED.read_text(encoding="utf-8"))


@pytest.fixture
def patched_catalog(monkeypatch):
    """Serve an edited manifest through nest_rt.catalog for one test."""
    def serve(data: dict) -> None:
        monkeypatch.setattr(catalog, "load_manifest", lambda: parse_manifest(data))
    return serve


def test_the_packaged_manifest_is_a_file_inside_the_package_and_the_top_level_one_reads_the_same():
    assert PACKAGED.is_file() and not PACKAGED.is_symlink()
    assert (REPO / catalog.MANIFEST_NAME).read_bytes() == PACKAGED.read_bytes()


def test_every_entry_is_typed_and_absent_optional_keys_read_as_empty(raw):
    manifest = parse_manifest(raw)
    assert list(manifest.models) == list(raw["models"]) and list(manifest.backbones) == list(raw["backbones"])
    fwrf = catalog.fwrf_model()
    assert not fwrf.is_linear and fwrf.outputs == () and fwrf.variants is None and fwrf.backbone is None
    assert fwrf.rois == tuple(raw["models"][fwrf.id]["rois"])
    meg = manifest.models[MEG]
    assert meg.variants.stacked.axis == "splits" and meg.legacy is None  # "legacy": null is absent
    assert manifest.backbones[meg.backbone].features == raw["backbones"][meg.backbone]["features"]
    eeg = manifest.models["eeg-things_eeg_2-vit_b_32"]
    assert eeg.outputs[0].as_json() == raw["models"][eeg.id]["outputs"][0]
    with pytest.raises(TypeError):
        eeg.selection["channels"] = None  # frozen: nobody edits the catalog in place


def _malformed(raw: dict, edit) -> str:
    data = copy.deepcopy(raw)
    edit(data)
    with pytest.raises(ManifestError) as caught:
        parse_manifest(data)
    return str(caught.value)


@pytest.mark.parametrize("edit, expected", [
    (lambda m: m["models"][MEG]["variants"].__setitem__("values", ["full", 2]),
     f"models_manifest.json.models['{MEG}'].variants.values[1]: expected a string, got int"),
    (lambda m: m["models"][MEG]["variants"].__setitem__("default", "split9"),
     f"models['{MEG}'].variants.default: 'split9' is not one of the values"),
    (lambda m: m["models"][MEG].pop("subjects"), f"models['{MEG}'].subjects: missing"),
    (lambda m: m["models"][MEG].__setitem__("subject", [1]), f"models['{MEG}']: unknown keys ['subject']"),
    (lambda m: m["models"][MEG]["selection"]["timepoints"].__setitem__("axis", "time"),
     f"models['{MEG}'].selection['timepoints'].axis: no output array has the axis 'time'"),
    (lambda m: m["models"][MEG]["selection"]["region"].__setitem__("choices", "regions"),
     f"models['{MEG}'].selection['region']: names the list 'regions', not in the entry"),
    (lambda m: m["models"][MEG]["selection"]["region"].__setitem__("kind", "regex"),
     "selection['region'].kind: 'regex' is not one of"),
    (lambda m: m["models"][MEG].__setitem__("backbone", "dinov2"), f"models['{MEG}'].backbone: 'dinov2' is not in"),
    (lambda m: m["models"][MEG]["combine"].__setitem__("sensors", "sum"), "combine['sensors']: 'sum' is not one of"),
    (lambda m: m["models"][MEG]["outputs"][0].__setitem__("blocks", [1]), ".outputs[0].blocks: blocks are numbered 0..0"),
    (lambda m: m["models"][MEG]["outputs"][0]["axes"][0].__setitem__("size", "271"),
     ".outputs[0].axes[0].size: expected an integer, got str"),
    (lambda m: m["models"][MEG].pop("head"), "a model has both 'backbone' and 'head', or neither"),
    (lambda m: m["backbones"]["alexnet"].__setitem__("features", True), "backbones['alexnet'].features: expected an integer"),
    (lambda m: m["models"].__setitem__("meg-things", m["models"].pop(MEG)), "MODALITY-DATASET-MODEL"),
], ids=["type", "default", "missing", "unknown", "axis", "list", "kind", "backbone", "combine", "blocks", "size",
        "head", "bool", "id"])
def test_a_malformed_entry_fails_at_load_naming_its_path(raw, edit, expected):
    assert expected in _malformed(raw, edit)


def test_a_model_without_stacked_variants_is_served_the_same_by_the_api_and_the_model_grammar(raw, patched_catalog):
    """An absent variants.stacked once failed in nest-rt encode only (KeyError) while the API
    treated it as optional: now both read the one typed value."""
    del raw["models"][MEG]["variants"]["stacked"]
    patched_catalog(raw)
    bundle = SimpleNamespace(manifest={"models": {MEG: {"graphs": {"1": {"split1": {}}}}}})
    requests = parse_model_spec("meg:subjects=1:train_split=split1,split2", bundle)
    assert [r.variant for r in requests] == [{"train_split": "split1"}, {"train_split": "split2"}]
    with pytest.raises(InvalidParameterError, match="unknown keys \\['train_splits'\\]"):
        parse_model_spec("meg:subjects=1:train_splits=single", bundle)
    assert _variant_parameters(catalog.model_entry(MEG)) == {"train_split": ["full", "split1", "split2", "split3",
                                                                            "split4"]}
    with pytest.raises(InvalidParameterError, match="has no stacked variants; leave train_splits out"):
        _variants(MEG, None, "single")


def _string_constants(path: Path) -> set[str]:
    return {node.value for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)}


# The writers of the ViT toolkits in NEST's own formats, for the tests and the demo: they imitate
# two particular models' upstream files (EEG in both layouts, fsaverage), which they name.
IMITATORS = {"export/synthetic_vit.py"}


def test_no_production_code_spells_out_a_model_id():
    """Model identity lives in the manifest: code asks the catalog (fwrf_model(), is_linear,
    an entry's alias) instead of comparing with an id."""
    ids = set(catalog.models()) | {alias for entry in catalog.models().values() for alias in entry.aliases}
    found = {}
    for path in sorted([*(REPO / "nest_rt").rglob("*.py"), *(REPO / "export").rglob("*.py")]):
        if path.relative_to(REPO).as_posix() in IMITATORS:
            continue
        spelled = _string_constants(path) & ids
        if spelled:
            found[str(path.relative_to(REPO))] = sorted(spelled)
    assert found == {}
