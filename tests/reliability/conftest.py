from __future__ import annotations

import shutil

import pytest
from reliability_helpers import tiny_overrides, train_in_process

from tcjepa.data.layouts import write_scene_dataset


@pytest.fixture(scope="session")
def scenes(tmp_path_factory):
    """Tiny captioned scenes shared read-only by every reliability test (copy before mutating)."""
    root = tmp_path_factory.mktemp("rel_scenes")
    write_scene_dataset(root, train=48, val=8, captions_per_image=3, image_size=32, seed=0, progress=False)
    return root


@pytest.fixture
def scenes_copy(scenes, tmp_path):
    dst = tmp_path / "scenes"
    shutil.copytree(scenes, dst)
    return dst


@pytest.fixture(scope="session")
def reference_run(scenes, tmp_path_factory):
    """The uninterrupted run every fault-injection run must reproduce bit for bit."""
    out = tmp_path_factory.mktemp("rel_reference")
    train_in_process(tiny_overrides(scenes, out))
    return out
