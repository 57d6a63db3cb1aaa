"""nest-rt synthetic-toolkit offers every model of the catalog, and what it writes for each is a
toolkit the export reads: a model added to models_manifest.json needs no synthetic-toolkit code.

The export's readers and head checks run here on every model; the whole path (synthetic-toolkit
-> export -> encode) runs in tests/test_alexnet.py (eeg-alexnet_untrained, the cheapest backbone)."""
from __future__ import annotations

import argparse
import subprocess
import sys

import numpy as np
import pytest

from nest_rt import catalog, selection
from nest_rt.commands import synthetic_toolkit
from nest_rt_export import linear_export, toolkit

COMPONENTS = 2


def offered_models() -> list[str]:
    parser = argparse.ArgumentParser()
    synthetic_toolkit.add_arguments(parser)
    return next(action for action in parser._actions if action.dest == "models").choices


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nest_rt.cli", *args], capture_output=True, text=True, timeout=600)


def test_the_models_offered_are_the_catalogs_short_names():
    aliases = [entry.alias for entry in catalog.models().values()]
    assert offered_models() == aliases
    assert {"fwrf", "eeg", "fsaverage", "eeg-alexnet", "fsaverage-alexnet"} <= set(aliases)  # the older names


@pytest.fixture(scope="module")
def linear_toolkit(tmp_path_factory):
    """One subject of every linear model the command offers, in one run (about 20 s)."""
    out = tmp_path_factory.mktemp("synthetic") / "toolkit"
    linear = [alias for alias in offered_models() if catalog.model_entry(alias).is_linear]
    made = cli("synthetic-toolkit", "--out", str(out), "--models", *linear, "--subjects", "1", "N",
               "--components", str(COMPONENTS))
    assert made.returncode == 0, made.stderr
    return out, made.stdout


def linear_models() -> list[str]:
    return [model_id for model_id, entry in catalog.models().items() if entry.is_linear]


@pytest.mark.parametrize("model_id", linear_models())
def test_every_linear_model_written_is_read_and_checked_by_the_export(linear_toolkit, model_id):
    """The export's own readers and head checks (shapes, labels, the manifest's names) accept each
    subject and variant; each selection the manifest offers finds its metadata and selects outputs."""
    out, _ = linear_toolkit
    subject = catalog.subjects(model_id)[0]  # 1, or TVSD's monkey N
    variants = catalog.variants(model_id)
    assert toolkit.available_heads(out, model_id) == {subject: variants}
    for variant in variants:
        where = f"{model_id} subject {subject} {variant}"
        weights, _ = toolkit.load_head(out, model_id, subject, variant)
        metadata = toolkit.load_npy_dict(toolkit.head_files(out, model_id, subject, variant)["metadata"])
        scaler, pcas, regressions, _ = toolkit.head_blocks(weights, model_id, where)
        assert linear_export._check_head(model_id, where, scaler, pcas, regressions, metadata) == COMPONENTS
    entry = catalog.model_entry(model_id)
    for key, rule in entry.selection.items():
        if rule.kind == "mask":
            continue
        first = entry.names(rule.names if rule.kind == "names" else rule.choices)[0]
        plans = selection.plan(model_id, {key: [first]}, lambda: metadata)
        assert sum(np.prod(plan.shape) for plan in plans) > 0, (key, first)


def test_the_backbones_random_weights_are_named_for_export(linear_toolkit):
    out, printed = linear_toolkit
    for name in ("vit_b_32", "alexnet"):
        assert f"--weights {name}={out / f'{name}_synthetic.pth'}" in printed
    assert "alexnet_untrained" not in printed  # built from upstream's seed: it takes no weights file


def test_models_outside_the_legacy_layout_are_refused(tmp_path):
    result = cli("synthetic-toolkit", "--out", str(tmp_path / "t"), "--models", "meg", "--layout", "legacy",
                 "--components", "2")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "meg exists only in the current layout" in result.stderr
    assert not (tmp_path / "t").exists()


def test_a_model_without_the_subjects_asked_for_is_refused(tmp_path):
    result = cli("synthetic-toolkit", "--out", str(tmp_path / "t"), "--models", "tvsd", "--subjects", "1")
    assert result.returncode == 2 and "tvsd has the subjects N, F" in result.stderr
    assert not (tmp_path / "t").exists()


def test_a_head_without_a_shared_pca_is_written_and_read_with_one_pca_per_block(monkeypatch):
    """The catalog admits a head whose blocks each name their own PCA and no shared one: the
    generic writer writes one PCA per block there, and the export's reader finds them."""
    import json
    from pathlib import Path

    from nest_rt.catalog_entries import parse_manifest
    from nest_rt_export import synthetic_linear
    model_id = "eeg-things_eeg_2-alexnet"
    edited = json.loads(Path(catalog.__file__).with_name(catalog.MANIFEST_NAME).read_text(encoding="utf-8"))
    del edited["models"][model_id]["head"]["shared_pca"]
    monkeypatch.setattr(catalog, "load_manifest", lambda: parse_manifest(edited))
    entry = catalog.model_entry(model_id)
    features = np.random.default_rng(0).normal(size=(3, catalog.backbone(entry.backbone).features)).astype(np.float32)
    weights = synthetic_linear.random_head(entry, features, np.random.default_rng(1), COMPONENTS)
    _, pcas, regressions, per_block = toolkit.head_blocks(weights, model_id, "edited catalog")
    assert per_block and len(pcas) == len(regressions) == 4
    assert len({id(pca) for pca in pcas}) == 4, "each block its own PCA"
