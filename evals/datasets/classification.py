"""The classification sets a linear probe runs on, by name: each maps to its reader and to
the task name its results carry (the tables' columns)."""
from __future__ import annotations

from typing import Callable

from evals.datasets.cifar100 import CIFAR100
from evals.datasets.imagenet import ImageNetFolder
from evals.datasets.inat import INat2018

CLASSIFICATION_SETS: dict[str, tuple[str, Callable]] = {
    "imagenet": ("in1k", ImageNetFolder),  # root/{train,val}/<wnid>/*.JPEG
    "cifar100": ("cifar100", CIFAR100),  # cifar-100-python/{train,test,meta}; val = test
    "inat18": ("inat18", INat2018),  # {train,val}2018.json + train_val2018/
}


def classification_splits(name: str, root, transform) -> tuple[object, object, str]:
    """(train, val, task prefix) of the named set."""
    prefix, reader = CLASSIFICATION_SETS[name]
    return reader(root, "train", transform), reader(root, "val", transform), prefix
