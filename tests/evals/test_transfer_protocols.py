"""CIFAR-100, iNat2018 and VOC 2012: readers of the official layouts read the generated
trees (and refuse bad ones with one line), and each protocol reaches its table column."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from global_helpers import save_ijepa_pth_tar
from PIL import Image

from evals.cli import main
from evals.datasets.cifar100 import CIFAR100
from evals.datasets.imagenet import DatasetLayoutError
from evals.datasets.inat import INat2018
from evals.datasets.voc import VOCSegmentation
from evals.results import read_runs
from evals.tables import write_tables
from tcjepa.data.scenes import SCENE_CLASSES, SHAPES, generate_scene
from tcjepa.data.transfer_layouts import write_cifar100, write_inat2018, write_voc2012


class _RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_cifar100_batches_read_as_arrays_and_code_is_refused(tmp_path):
    root = write_cifar100(tmp_path, train=12, test=6)
    train, test = CIFAR100(tmp_path, "train"), CIFAR100(root, "val")
    assert (len(train), len(test)) == (12, 6) and train.classes == list(SCENE_CLASSES)
    scene = generate_scene(0, "train", 3, image_size=32, num_captions=1)
    image, label = train[3]
    assert label == scene.label and np.array_equal(np.asarray(image), scene.image)
    assert test.fingerprint() != train.fingerprint()

    marker = tmp_path / "ran"
    (root / "test").write_bytes(pickle.dumps({b"data": _RunsCode(str(marker))}, protocol=2))
    with pytest.raises(DatasetLayoutError, match=r"test: refuses to load (posix|nt|os)\.system"):
        CIFAR100(root, "val")
    assert not marker.exists()
    (root / "test").write_bytes(pickle.dumps({b"data": np.zeros((2, 5), np.uint8), b"fine_labels": [0, 1]}))
    with pytest.raises(DatasetLayoutError, match=r"uint8 \(N, 3072\)"):
        CIFAR100(root, "val")
    with pytest.raises(DatasetLayoutError, match="cifar-100-python"):
        CIFAR100(tmp_path / "elsewhere", "train")


def test_inat2018_json_layout_and_its_errors(tmp_path):
    write_inat2018(tmp_path, train=10, val=4, size=32)
    train, val = INat2018(tmp_path, "train"), INat2018(tmp_path, "val")
    assert train.classes == val.classes == list(SCENE_CLASSES) and (len(train), len(val)) == (10, 4)
    assert train[2][1] == generate_scene(0, "train", 2, image_size=32, num_captions=1).label
    assert "train_val2018/" in str(train.samples[0][0])

    document = json.loads((tmp_path / "val2018.json").read_text())
    document["annotations"].append(dict(document["annotations"][0], id=999))
    (tmp_path / "val2018.json").write_text(json.dumps(document))
    with pytest.raises(DatasetLayoutError, match="several annotations"):
        INat2018(tmp_path, "val")
    train.samples[0][0].unlink()
    with pytest.raises(DatasetLayoutError, match="1 listed images are not on disk"):
        INat2018(tmp_path, "train")


def test_voc2012_palette_labels_with_ignored_borders(tmp_path):
    write_voc2012(tmp_path, train=4, val=2, size=48)
    train = VOCSegmentation(tmp_path, "train")
    assert train.classes == ("background", *SHAPES) and len(train) == 4
    image, label = train[0]
    assert image.shape == (48, 48, 3) and label.dtype == np.int64
    assert set(np.unique(label)) <= set(range(len(SHAPES) + 1)) | {255} and (label == 255).any()
    assert (label == 0).any() and ((label > 0) & (label < 255)).any()
    Image.open(train.label_files[1]).convert("RGB").save(train.label_files[1])
    with pytest.raises(DatasetLayoutError, match="RGB PNG"):
        train[1]
    with pytest.raises(DatasetLayoutError, match="VOCdevkit"):
        VOCSegmentation(tmp_path / "nowhere", "val")


def _measured_cells(tmp_path, table: str) -> str:
    write_tables(tmp_path / "tables", tmp_path / "runs")
    return next((tmp_path / "tables").glob(f"{table}_*.md")).read_text()


@pytest.mark.slow
def test_cifar100_inat_and_voc_reach_their_table_columns(tmp_path):
    save_ijepa_pth_tar(tmp_path / "w.pth.tar", depth=4)
    backbone = ["--backbone", "ijepa", "--weights", str(tmp_path / "w.pth.tar"), "--device", "cpu",
                "--out", str(tmp_path / "runs"), "--pretraining-data", "IN-1k"]
    write_cifar100(tmp_path / "cifar", train=24, test=12)
    write_inat2018(tmp_path / "inat", train=24, val=12, size=32)
    write_voc2012(tmp_path / "voc", train=4, val=2, size=32)
    probe = ["--workers", "0", "--epochs", "2", "--lrs", "0.1", "--batch-size", "8"]
    assert main(["linear", "--dataset", "cifar100", "--data", str(tmp_path / "cifar"), *probe, *backbone]) == 0
    assert main(["linear", "--dataset", "inat18", "--data", str(tmp_path / "inat"), *probe, *backbone]) == 0
    assert main(["voc", "--data", str(tmp_path / "voc"), "--iters", "4", "--batch-size", "2", "--crop-size", "32",
                 *backbone]) == 0
    runs = read_runs(tmp_path / "runs")
    assert sorted(run["task"] for run in runs) == ["cifar100_linear", "inat18_linear", "voc_linear"]
    other = _measured_cells(tmp_path, "other")  # a tiny ViT is no paper table's architecture
    assert "CIFAR-100 linear top-1" in other and "iNat18 linear top-1" in other and "VOC linear mIoU" in other
    for run in runs:  # the same numbers, recorded as Table 2's ViT-H/14, land there
        path = Path(run.pop("path"))
        path.write_text(json.dumps({**run, "arch": "ViT-H/14"}))
    table2 = _measured_cells(tmp_path, "table2")
    measured = [line for line in table2.splitlines() if "| measured |" in line]
    assert len(measured) == 1 and "iNat18 linear top-1" in table2 and "VOC linear mIoU" in table2
    header = [c.strip() for c in table2.splitlines()[2].split("|")]
    cells = [c.strip() for c in measured[0].split("|")]
    assert cells[header.index("iNat18 linear top-1")] and cells[header.index("VOC linear mIoU")]


def test_tcjepa_data_transfer_writes_the_three_trees(tmp_path, capsys):
    from tcjepa.cli.data import main as data_main

    assert data_main(["transfer", "--out", str(tmp_path), "--train", "3", "--val", "2", "--image-size", "32"]) == 0
    assert len(CIFAR100(tmp_path, "val")) == 2 and len(INat2018(tmp_path / "inat2018", "train")) == 3
    assert len(VOCSegmentation(tmp_path, "val")) == 2
    assert data_main(["transfer", "--out", str(tmp_path / "x"), "--train", "0"]) == 2
    assert "--train" in capsys.readouterr().err
