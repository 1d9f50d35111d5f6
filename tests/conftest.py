"""Shared fixtures: tiny randomly-initialised models built from the "test" presets."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # so `reptok`, `train.*` and `tests.*` import from a fresh clone

from reptok.pipeline import RepTok  # noqa: E402
from tests.helpers import randomize_, tiny_config, write_shapes_folder  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model() -> RepTok:
    torch.manual_seed(0)
    model = RepTok.from_config(tiny_config())
    # A freshly built decoder outputs v = 0 (zero-init); give it weights so outputs depend on z and noise.
    randomize_(model.decoder, seed=1)
    randomize_(model.class_generator, seed=2)
    randomize_(model.text_generator, seed=3)
    return model


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model: RepTok, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny"
    tiny_model.save_pretrained(path, dtype=torch.float32)
    return path


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny image folder (circles and squares) for the training scripts' end-to-end tests."""
    return write_shapes_folder(tmp_path_factory.mktemp("shapes") / "data")


# The app's fixtures (tests/app_fixtures.py), for test_app.py, test_app_layout.py and test_app_manifold.py.
from tests.app_fixtures import client, files, manifold_path, model_dir  # noqa: E402, F401
