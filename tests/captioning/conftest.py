"""Tiny random-weight captioners of every family (saved with save_pretrained, loaded from the
folder as a published checkpoint is) and a few generated scenes to caption."""
from __future__ import annotations

import pytest
import torch

from tcjepa.captioning.random_models import FAMILIES, save_random_captioner
from tcjepa.data.layouts import write_scene_dataset


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    # Seven engineers share two cores: extra OpenMP threads only spin (see families.py).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("captioners")
    return {family: save_random_captioner(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="session")
def scenes(tmp_path_factory):
    """8 training scenes of 32 px (images/train/*.jpg) and the other layouts, read-only."""
    root = tmp_path_factory.mktemp("cap_scenes")
    write_scene_dataset(root, train=8, val=2, captions_per_image=2, image_size=32, seed=0, workers=1, progress=False)
    return root


@pytest.fixture(scope="session")
def captions_args():
    """f(images, model, out, *extra): a `tcjepa-data captions` command line sized for the tiny
    models, decoding in the main process."""
    return _captions_args


def _captions_args(images, model, out, *extra) -> list[str]:
    return ["captions", "--images", str(images), "--model", str(model), "--out", str(out), "--per-image", "3",
            "--max-words", "8", "--max-new-tokens", "6", "--batch-size", "3", "--chunk-size", "3", "--workers", "0",
            "--quiet", *map(str, extra)]
