"""Every command the documentation shows runs, in its tiny version.

The rule is written on docs/contributing.md ("Commands in the docs"): each line of a ```bash block in README.md and
docs/ runs here, a page's lines in order in one empty folder, so that a page's later commands read the runs its
earlier ones made; `transfer` lines through the CLI with every backbone the tiny test row under the name the line
gives, `data/fashion-sample` cut to 3 classes of 12 images and `digits` to 70 images per class; install lines
name an extra that pyproject.toml defines; `tensorboard --logdir DIR` runs as `tensorboard --inspect --logdir
DIR`. Any other command fails this test (Ray cluster commands are shown as text: see the contributing page).
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import tomllib
from click.testing import CliRunner

import cli
from tests.conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FASHION_CLASSES, FASHION_PER_CLASS, DIGITS_PER_CLASS = ("bag", "sneaker", "trouser"), 12, 70


def bash_lines(page: Path) -> list[str]:
    """The commands of a page's ```bash blocks: continuation lines joined, comments dropped, ``&&`` split."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", page.read_text(), re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words:
                cut = words.index("&&") if "&&" in words else len(words)
                commands.append(shlex.join(words[:cut]))
                words = words[cut + 1:]
    return [c for c in commands if c]


# A page whose commands repeat an earlier page's (docs/index.md repeats the README's) is run once.
DOC_PAGES = {}
for _page in PAGES:
    if bash_lines(_page) and bash_lines(_page) not in DOC_PAGES.values():
        DOC_PAGES[str(_page.relative_to(ROOT))] = bash_lines(_page)
# Pages that train whole comparisons: with the other end-to-end runs, after the fast suite.
SLOW_PAGES = {page for page, commands in DOC_PAGES.items() if any(c.startswith("transfer compare") for c in commands)}


def test_the_docs_show_commands_and_every_one_has_a_rule():
    known = ("transfer ", "pip install ", "python3 -m venv ", ". .venv/bin/activate", "pytest", "tensorboard ")
    unknown = [(page, c) for page, commands in DOC_PAGES.items() for c in commands if not c.startswith(known)]
    assert DOC_PAGES and unknown == []


@pytest.fixture(scope="module")
def docs_keras_home(tmp_path_factory):
    """One Keras home for the docs' pages, as one machine keeps its measurements and exports between commands."""
    return tmp_path_factory.mktemp("docs-keras-home")


@pytest.fixture
def small_world(tmp_path, monkeypatch, tiny_backbone, docs_keras_home):
    """An empty folder with the repository's data made small, and every backbone the tiny one."""
    import numpy as np
    import sklearn.datasets
    from PIL import Image

    from transfer.backbones import REGISTRY

    for name in list(REGISTRY):
        monkeypatch.setitem(REGISTRY, name, dataclasses.replace(tiny_backbone, name=name))
    monkeypatch.setenv("KERAS_HOME", str(docs_keras_home))
    for name in FASHION_CLASSES:
        target = tmp_path / "data" / "fashion-sample" / name
        target.mkdir(parents=True)
        for image in sorted((ROOT / "data" / "fashion-sample" / name).iterdir())[:FASHION_PER_CLASS]:
            shutil.copy(image, target / image.name)
    digits = sklearn.datasets.load_digits()
    keep = np.concatenate([np.flatnonzero(digits.target == k)[:DIGITS_PER_CLASS] for k in range(10)])
    small = sklearn.utils.Bunch(images=digits.images[keep], target=digits.target[keep])
    monkeypatch.setattr(sklearn.datasets, "load_digits", lambda: small)
    rng = np.random.default_rng(0)
    for name in ("photo.jpg", "mine.jpg", "other.png", "my-images/a.png", "my-images/b.jpg"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_command(command: str, extras: set[str]) -> None:
    words = shlex.split(command)
    if words[0] == "transfer":
        result = CliRunner().invoke(cli.main, words[1:], catch_exceptions=False)
        assert result.exit_code == 0, f"{command}\n{result.output}"
        assert "Traceback" not in result.output
    elif words[:2] == ["pip", "install"]:
        wanted = re.findall(r"^\.\[(\w+)\]$", words[-1])
        assert words[-1] == "mlflow" or (wanted and wanted[0] in extras), command
    elif words[0] == "tensorboard":
        done = subprocess.run(["tensorboard", "--inspect", *words[1:]], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "Found event files" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize("page", [pytest.param(p, marks=pytest.mark.slow) if p in SLOW_PAGES else p
                                  for p in DOC_PAGES])
def test_the_commands_of_a_page_run(page, small_world):
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    for command in DOC_PAGES[page]:
        run_command(command, extras)


def test_the_api_reference_documents_every_public_name():
    import transfer

    reference = (ROOT / "docs" / "reference.md").read_text()
    shown = {name: module for module, name in re.findall(r"^::: ([\w.]+)\.(\w+)$", reference, re.M)}
    assert sorted(shown) == sorted(transfer.__all__)
    import importlib

    for name, module in shown.items():  # each entry is the object `transfer.NAME` is
        assert getattr(importlib.import_module(module), name) is getattr(transfer, name), name
