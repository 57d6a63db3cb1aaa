"""The README's code blocks, run as written on the demo bundle, and every relative link of the docs.

Each ```bash and ```python block of README.md follows a marker comment that says what this test
does with it, so that no block is left out by accident:

- ``<!-- readme-test: run -->``: run it (bash, or this interpreter for python) in a folder where
  the quick start's demo has run, with ``.venv/bin/`` standing for this interpreter's own folder;
- ``<!-- readme-test: run-after-install -->``: the same, without the leading commands that create
  the venv and install into it (tests/run.sh has installed this venv the same way);
- ``<!-- readme-test: skip (why) -->``: not run (installs, needs torch, a GPU or a toolkit, or
  is the test suite itself).

The ```text block after the quick start is what the demo prints: its lines must appear, in order,
in the demo's output (numbers and the clone's path may differ). tests/run.sh runs this in the
torch-free venv with the demo extra, from outside the repository.
"""
from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = [README, REPO / "benchmarks" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARKER = re.compile(r"<!-- readme-test: (run|run-after-install|skip \(.+?\)) -->\n")
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
INSTALL_STEP = re.compile(r"^(python3 -m venv \.venv|\.venv/bin/pip install )")
CLONE_PATH = "/home/you/nest_rt/.venv/bin/"  # how the README writes the venv's folder in printed output
TIMEOUT = 600


def readme_blocks() -> list[tuple[str, str, str]]:
    """(language, code, marker) of every fenced block of the README; marker '' when the line
    before the block is not a marker."""
    text = README.read_text()
    blocks = []
    for match in BLOCK.finditer(text):
        line_before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1] + "\n"
        marker = MARKER.fullmatch(line_before)
        blocks.append((match.group(1), match.group(2), marker.group(1) if marker else ""))
    return blocks


def runnable(marker: str) -> bool:
    return marker in ("run", "run-after-install")


def in_this_venv(code: str) -> str:
    """The README's relative ``.venv/bin/`` (not inside a longer path) as this venv's folder."""
    return re.sub(r"(?<![\w/.])\.venv/bin/", lambda _: f"{Path(sys.executable).parent}/", code)


def run_block(language: str, code: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", code] if language == "python" else ["bash", "-euo", "pipefail", "-c",
                                                                          in_this_venv(code)]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, f"README block failed:\n{code}\n--- stdout\n{result.stdout}\n" \
                                   f"--- stderr\n{result.stderr}"
    return result


def after_install(code: str) -> str:
    """The quick start's command without its venv and install steps."""
    steps = [step.strip() for step in code.strip().split("&&")]
    kept = [step for step in steps if not INSTALL_STEP.match(step)]
    assert kept and len(kept) < len(steps), f"no install step to leave out in {code!r}"
    return " && ".join(kept)


@pytest.fixture(scope="module")
def quick_start(tmp_path_factory) -> tuple[Path, str]:
    """A folder where the quick start's first command has run; and what it printed."""
    (language, code, _), = [block for block in readme_blocks() if block[2] == "run-after-install"]
    command = after_install(code)
    if importlib.util.find_spec("torch") is not None:
        # only outside tests/run.sh (a local check in the export venv): the torch-free demo the
        # README shows, not the full one that torch would select
        command += " --runtime-only"
    work = tmp_path_factory.mktemp("readme")
    return work, run_block(language, command, work).stdout


def test_every_code_block_is_marked():
    unmarked = [code.splitlines()[0] for language, code, marker in readme_blocks()
                if language in ("bash", "python", "sh", "shell") and not marker]
    assert not unmarked, f"README blocks without a readme-test marker: {unmarked}"
    assert sum(runnable(marker) for _, _, marker in readme_blocks()) >= 3


def test_the_quick_start_prints_what_the_readme_shows(quick_start):
    _, printed = quick_start
    shown = [code for language, code, _ in readme_blocks() if language == "text"][0]
    lines = iter(printed.splitlines())
    for expected in shown.strip().splitlines():
        pattern = printed_line_pattern(expected)
        assert any(re.fullmatch(pattern, line) for line in lines), f"not printed (in order): {expected}"


def printed_line_pattern(shown: str) -> str:
    """A line the README shows as printed, as a pattern: any decimal number (means and standard
    deviations vary) and any folder in place of the README's stand-in for the clone."""
    pieces = re.split(r"[-+]?\d+\.\d+", shown)
    pattern = r"[-+]?\d+\.\d+".join(re.escape(piece) for piece in pieces)
    return pattern.replace(re.escape(CLONE_PATH), ".*")


def test_the_demo_names_this_venvs_nest_rt(quick_start):
    work, printed = quick_start
    commands = printed.split("next, for example:\n", 1)[1].splitlines()
    assert len(commands) == 3
    for command in commands:
        assert command.strip().startswith(shlex.quote(str(Path(sys.executable).with_name("nest-rt"))))
        run_block("bash", command, work)  # pasted as printed
    assert (work / "demo_output" / "my_responses" / "run.json").is_file()


@pytest.mark.parametrize("index", [i for i, (_, _, marker) in enumerate(readme_blocks()) if marker == "run"],
                         ids=lambda index: readme_blocks()[index][1].splitlines()[0][:40])
def test_readme_block_runs_as_written(quick_start, index):
    work, _ = quick_start
    language, code, _ = readme_blocks()[index]
    run_block(language, code, work)


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors: the heading in lower case, punctuation dropped, spaces as hyphens."""
    outside_code = BLOCK.sub("", markdown)
    headings = re.findall(r"^#+ (.+)$", outside_code, re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("document", DOCS, ids=lambda path: str(path.relative_to(REPO)))
def test_relative_links_resolve(document):
    text = BLOCK.sub("", document.read_text())
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        resolved = (document.parent / path).resolve() if path else document
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in heading_anchors(resolved.read_text()):
            broken.append(target)
    assert not broken, f"{document.name}: links that lead nowhere: {broken}"
