from __future__ import annotations

import pytest

from tcjepa.data.layouts import write_scene_dataset

TRAIN, VAL, CAPTIONS, SIZE = 24, 6, 4, 64
SCENES = {"train": TRAIN, "val": VAL, "captions_per_image": CAPTIONS, "image_size": SIZE}


@pytest.fixture(scope="session")
def scenes_root(tmp_path_factory):
    """A tiny generated scene set, shared read-only by the data tests (copy before mutating)."""
    root = tmp_path_factory.mktemp("scenes")
    write_scene_dataset(root, **SCENES, seed=0, workers=1, progress=False)
    return root


@pytest.fixture(scope="session")
def scenes_params():
    return dict(SCENES)
