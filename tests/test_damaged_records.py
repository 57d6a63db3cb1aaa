"""Run records and run folders damaged by hand, or holding what someone else left there (issue 21):
every damaged run.json or progress.json is the documented RunStateError (one line, exit 2 from
the command line), never a KeyError, TypeError or RecursionError from deep inside merge or
encode; counts a record declares must agree with what it describes; and nest-rt never empties,
deletes or writes through a folder or file it did not create (a merge's OUT.partial, an encode
run's temporary files and lock).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nest_rt import RunStateError
from nest_rt.runs import RunInputs, encode_run, merge_runs

from conftest import edit_json, quiet

SPECS = ["fwrf:roi=V1"]
DEEP = "[" * 100_000 + "]" * 100_000  # deeper than Python's recursion limit


def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nest_rt.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """9 PNGs; img_7.png is truncated after its header, so it fails while its chunk runs."""
    folder = tmp_path_factory.mktemp("images") / "set"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for index in range(9):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"img_{index}.png")
    data = (folder / "img_7.png").read_bytes()
    (folder / "img_7.png").write_bytes(data[:len(data) * 2 // 3])
    return folder


def encode(bundle, images, out, **options):
    return encode_run(bundle, RunInputs([str(images)], skip_bad=True), SPECS, out, imageset="set",
                      show_progress=False, log=quiet, chunk_size=3, **options)


@pytest.fixture(scope="module")
def runs(bundle_dir, images, tmp_path_factory) -> dict[str, Path]:
    """An unsharded run, and the same run in two shards (rows 0-2 and 3-8)."""
    root = tmp_path_factory.mktemp("runs")
    encode(bundle_dir, images, root / "single")
    for index in range(2):
        encode(bundle_dir, images, root / f"shard{index}", shard=(index, 2))
    return {"single": root / "single", "shards": [root / "shard0", root / "shard1"]}


def copies(runs, tmp_path: Path) -> list[Path]:
    folders = []
    for folder in runs["shards"]:
        shutil.copytree(folder, tmp_path / folder.name, symlinks=True)
        folders.append(tmp_path / folder.name)
    return folders


def test_a_merged_run_equals_the_unsharded_one_in_progress_json_too(runs, tmp_path):
    merged = merge_runs(runs["shards"], tmp_path / "merged", log=quiet)
    assert [Path(r["path"]).name for r in merged["inputs"]["rejected"]] == ["img_7.png"]
    for name in ("run.json", "progress.json"):
        assert (tmp_path / "merged" / name).read_bytes() == (runs["single"] / name).read_bytes(), name


# -- item 1: a staging folder nest-rt did not create is never emptied, deleted or followed ----------
@pytest.mark.parametrize("kind", ["folder", "symlink", "file"])
def test_merge_refuses_an_out_partial_it_did_not_create(runs, tmp_path, kind):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("precious")
    staging = tmp_path / "all.partial"
    if kind == "folder":
        staging.mkdir()
        (staging / "notes.txt").write_text("precious")
    elif kind == "symlink":
        staging.symlink_to(victim)
    else:
        staging.write_text("precious")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = cli("merge", *map(str, runs["shards"]), "--out", str(tmp_path / "all"))
    one_line_error(result, str(staging), "not created by nest-rt merge")
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing created, nothing deleted
    assert (victim / "notes.txt").read_text() == "precious" and not os.path.lexists(tmp_path / "all")


def test_merge_clears_and_reuses_its_own_interrupted_staging(runs, tmp_path):
    """What an interrupted merge leaves (its marker, a half-copied file, a link) is cleared; the
    link is removed, not followed."""
    first = tmp_path / "first"
    merge_runs(runs["shards"], first, log=quiet)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    staging = tmp_path / "all.partial"
    staging.mkdir()
    (staging / ".nest-rt-merge-staging").write_text("")
    (staging / "half.npy").write_bytes(b"\x93NUMPY")
    (staging / "link").symlink_to(victim)
    merge_runs(runs["shards"], tmp_path / "all", log=quiet)
    assert not staging.exists() and (victim / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == sorted(p.name for p in first.iterdir())


# -- item 1: an encode run's own file names are never written through links planted there ---------
def unfinished_copy(runs, out: Path) -> Path:
    """The unsharded run as if killed after its first chunk (its rows are all there: same bytes)."""
    shutil.copytree(runs["single"], out)
    edit_json(out / "run.json", lambda r: r.update(status="running"))
    (out / "progress.json").write_text(json.dumps({"chunks_done": [0], "failed": []}))
    for final in out.rglob("*.npy"):
        final.rename(final.with_name(final.name + ".partial"))
    return out


@pytest.mark.parametrize("name", ["run.json.tmp", "progress.json.tmp", "metadata.npz.tmp"])
def test_a_resumed_encode_never_writes_through_links_planted_under_its_temporary_names(
        runs, bundle_dir, images, tmp_path, name):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = unfinished_copy(runs, tmp_path / "out")
    if name == "metadata.npz.tmp":  # the metadata file is written again when it is missing
        metadata = next(out.rglob("*metadata*.npz"))
        metadata.unlink()
        planted = metadata.with_name(metadata.name + ".tmp")
    else:
        planted = out / name
    planted.symlink_to(victim)
    assert encode(bundle_dir, images, out)["status"] == "complete"
    assert victim.read_text() == "precious" and not os.path.lexists(planted)
    assert (out / "progress.json").read_bytes() == (runs["single"] / "progress.json").read_bytes()


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_encode_refuses_a_lock_it_did_not_create(bundle_dir, images, tmp_path, kind):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".lock").symlink_to(victim) if kind == "symlink" else os.mkfifo(out / ".lock")
    result = cli("encode", str(images), "--bundle", str(bundle_dir), "--model", SPECS[0], "--out", str(out),
                 "--skip-bad-images", "--no-progress", timeout=120)  # a named pipe used to block for ever
    one_line_error(result, "not nest-rt's lock file")
    assert victim.read_text() == "precious"


def test_encode_never_writes_through_a_linked_partial_file(runs, bundle_dir, images, tmp_path):
    """An unfinished run whose .partial response file has become a link: refused, target untouched."""
    out = unfinished_copy(runs, tmp_path / "out")
    partial = next(out.rglob("*roi-V1.npy.partial"))
    victim = tmp_path / "victim.npy"
    partial.rename(victim)
    before = victim.read_bytes()
    partial.symlink_to(victim)
    with pytest.raises(RunStateError, match="symbolic link"):
        encode(bundle_dir, images, out)
    assert victim.read_bytes() == before


# -- items 2 and 6: damaged run records -----------------------------------------------------------
def _items(record):
    return record["inputs"]["items"]


RECORD_DAMAGE = {
    "fewer items than rows": (lambda r: _items(r).pop(), "inputs.items lists 5 files for 6 rows"),
    "more items than rows": (lambda r: _items(r).append(_items(r)[0]), "inputs.items lists 7 files"),
    "count": (lambda r: r["inputs"].update(count=5), "inputs.count 5"),
    "array rows": (lambda r: r["outputs"][0]["arrays"]["responses"]["shape"].__setitem__(0, 5), "not 6 rows"),
    "chunk size": (lambda r: (r.update(chunk_size=2), r["identity"].update(chunk_size=2)), "is not the rows --shard"),
    "shard stop": (lambda r: r["shard"].update(stop=8), "identity.shard differs"),
    "both shards": (lambda r: (r["shard"].update(start=4), r["identity"]["shard"].update(start=4)), "not the rows"),
    "rejected row": (lambda r: r["inputs"]["rejected"][0].update(row=1), "outside the shard's rows"),
    "no identity": (lambda r: r.pop("identity"), "identity is missing"),
    "no shard": (lambda r: r.pop("shard"), "shard is missing"),
    "shard a": (lambda r: r.update(shard="a"), "shard must be an object"),
    "shard index text": (lambda r: r["shard"].update(index="1"), "shard.index must be an integer"),
    "shard index bool": (lambda r: r["shard"].update(index=True), "shard.index must be an integer"),
    "inputs null": (lambda r: r.update(inputs=None), "inputs must be an object"),
    "outputs empty": (lambda r: r.update(outputs=[]), "differ in length"),
    "outputs object": (lambda r: r.update(outputs={}), "outputs must be a list"),
    "identity list": (lambda r: r.update(identity=[]), "identity must be an object"),
    "arrays list": (lambda r: r["outputs"][0].update(arrays=[]), "arrays must be an object"),
    "shape text": (lambda r: r["outputs"][0]["arrays"]["responses"].update(shape="6"), "shape must be a list"),
    "file number": (lambda r: r["outputs"][0]["arrays"]["responses"].update(file=3), "file must be a string"),
    "status": (lambda r: r.update(status=1), "status must be"),
    "kind": (lambda r: r["inputs"].update(kind="folder"), "inputs.kind must be"),
    "rejected text": (lambda r: r["inputs"].update(rejected="img_7.png"), "inputs.rejected must be a list"),
    "record list": (lambda r: None, "not a run record"),
    "record folder": (lambda r: None, "not a regular file"),
}


@pytest.mark.parametrize("case", list(RECORD_DAMAGE))
def test_merge_refuses_a_damaged_shard_record(runs, tmp_path, case):
    change, words = RECORD_DAMAGE[case]
    folders = copies(runs, tmp_path / "copies")
    if case == "record list":
        (folders[1] / "run.json").write_text("[]")
    elif case == "record folder":
        (folders[1] / "run.json").unlink()
        (folders[1] / "run.json").mkdir()
    else:
        edit_json(folders[1] / "run.json", change)
    with pytest.raises(RunStateError, match=words.replace("(", r"\(").replace(".", r"\.")):
        merge_runs(folders, tmp_path / "merged", log=quiet)
    assert not os.path.lexists(tmp_path / "merged") and not os.path.lexists(tmp_path / "merged.partial")


def test_merge_refuses_a_response_file_of_another_shape(runs, tmp_path):
    """Rows and hash fixed up together in run.json: the file's own header must say the same."""
    from nest_rt.bundle import sha256_file
    folders = copies(runs, tmp_path / "copies")
    record = json.loads((folders[1] / "run.json").read_text())
    info = record["outputs"][0]["arrays"]["responses"]
    np.save(folders[1] / info["file"], np.zeros((6, info["shape"][1] + 1), np.float32))
    edit_json(folders[1] / "run.json", lambda r: r["outputs"][0]["arrays"]["responses"].update(
        sha256=sha256_file(folders[1] / info["file"])))
    with pytest.raises(RunStateError, match="has shape"):
        merge_runs(folders, tmp_path / "merged", log=quiet)


def test_merge_refuses_a_named_pipe_for_a_metadata_file(runs, tmp_path):
    """Hashing it would wait for a writer for ever."""
    folders = copies(runs, tmp_path / "copies")
    metadata = next(folders[1].rglob("*metadata*.npz"))
    metadata.unlink()
    os.mkfifo(metadata)
    one_line_error(cli("merge", *map(str, folders), "--out", str(tmp_path / "merged"), timeout=120),
                   "not a regular file")  # bounded: it used to block for ever


def test_a_deeply_nested_run_record_is_one_line(runs, tmp_path):
    folders = copies(runs, tmp_path / "copies")
    text = (folders[1] / "run.json").read_text()
    (folders[1] / "run.json").write_text(text[:-1] + ', "x": ' + DEEP + "}")
    one_line_error(cli("merge", *map(str, folders), "--out", str(tmp_path / "merged")), "nested too deeply")


PROGRESS_DAMAGE = {
    "chunks text": '{"chunks_done": "0", "failed": []}',
    "chunk text": '{"chunks_done": ["0"], "failed": []}',
    "failed object": '{"chunks_done": [0], "failed": {}}',
    "failed row text": '{"chunks_done": [0], "failed": [{"row": "7", "path": "x", "reason": "y"}]}',
    "list": "[0]",
    "not utf-8": b"\xff\xfe{}",
    "not json": "{",
    "too deep": '{"chunks_done": [0], "x": ' + "[" * 100 + "]" * 100 + "}",
    "recursion": '{"chunks_done": ' + DEEP + "}",
    "loop": "LINK TO ITSELF",
    "named pipe": "FIFO",  # opened for reading, it would wait for a writer for ever
    "folder": "FOLDER",
}


@pytest.mark.parametrize("case", list(PROGRESS_DAMAGE))
def test_encode_refuses_a_damaged_progress_record(runs, bundle_dir, images, tmp_path, case):
    out = unfinished_copy(runs, tmp_path / "out")
    content = PROGRESS_DAMAGE[case]
    (out / "progress.json").unlink()
    if content == "LINK TO ITSELF":
        (out / "progress.json").symlink_to("progress.json")
    elif content == "FIFO":  # through the CLI, bounded: reading it used to block for ever
        os.mkfifo(out / "progress.json")
        one_line_error(cli("encode", str(images), "--bundle", str(bundle_dir), "--model", SPECS[0], "--out", str(out),
                           "--chunk-size", "3", "--imageset", "set", "--skip-bad-images", "--no-progress", timeout=120),
                       "progress.json", "not a regular file")
        return
    elif content == "FOLDER":
        (out / "progress.json").mkdir()
    else:
        (out / "progress.json").write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(RunStateError, match="progress.json"):
        encode(bundle_dir, images, out)
