from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from tcjepa.data.scenes import COLOURS, SCENE_CLASSES, SHAPES
from tcjepa.study.device_scenes import MAX_OBJECTS, heldout_set, render_block, training_batch
from tcjepa.study.scene_family import (COLOUR_NAMES, POSITION_NAMES, SIZES, TEMPLATES, VOCABULARY_SIZE,
                                       caption_text, caption_vocabulary, decode_caption_id)


def _hashes(batch) -> set[str]:
    return {hashlib.sha1(img.numpy().tobytes()).hexdigest() for img in batch.images}


def test_scenes_are_a_function_of_their_seed():
    a, b = training_batch(0, 1, 7, 16), training_batch(0, 1, 7, 16)
    for field in a.__dataclass_fields__:
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert not torch.equal(a.images, training_batch(0, 1, 8, 16).images)
    assert not torch.equal(a.images, training_batch(0, 2, 7, 16).images)  # run seeds see other scenes
    assert not torch.equal(a.images, training_batch(1, 1, 7, 16).images)


def test_heldout_is_fixed_and_disjoint_from_the_stream():
    held = heldout_set(0, 300, block_size=128)
    assert torch.equal(held.images, heldout_set(0, 300, block_size=128).images)
    assert len(held) == 300
    stream = set()
    for seed in range(2):
        for step in range(10):
            stream |= _hashes(training_batch(0, seed, step, 32))
    assert len(stream) == 2 * 10 * 32  # no repeats in the stream either
    assert not stream & _hashes(held)


def test_labels_and_segmentation_agree_with_the_objects():
    batch = render_block(0, "train", 3, 64)
    for i in range(len(batch)):
        label = int(batch.labels[i])
        n = int(batch.object_present[i].sum())
        assert (n <= 2) == SCENE_CLASSES[label].endswith("few")
        main_shape = SCENE_CLASSES[label].split("_")[0]
        assert SHAPES[int(batch.object_shape[i, MAX_OBJECTS - 1])] == main_shape
        # The main object is painted last, so all of its pixels stay visible.
        assert int((batch.instances[i] == MAX_OBJECTS).sum()) > 100
        seg_shapes = set(batch.segmentation[i].unique().tolist()) - {0}
        visible = {int(batch.object_shape[i, k]) + 1 for k in range(MAX_OBJECTS)
                   if (batch.instances[i] == k + 1).any()}
        assert seg_shapes == visible


def test_captions_state_what_is_in_the_image():
    batch = render_block(0, "train", 4, 64)
    size = batch.images.shape[-1]
    colours = np.array(list(COLOURS.values()), dtype=np.float64)
    checked_colours = 0
    for i in range(len(batch)):
        described = set(batch.caption_objects[i].tolist())
        assert described == {k for k in range(MAX_OBJECTS) if batch.object_present[i, k]}  # every object captioned
        for cid, slot in zip(batch.caption_ids[i].tolist(), batch.caption_objects[i].tolist()):
            f = decode_caption_id(cid)
            pixels = batch.instances[i] == slot + 1
            assert pixels.any()
            assert SHAPES[f["shape"]] == SHAPES[int(batch.object_shape[i, slot])]
            assert torch.all(batch.segmentation[i][pixels] == f["shape"] + 1)
            assert SIZES[f["size"]] == ("large" if slot == MAX_OBJECTS - 1 else "small")
            ys, xs = torch.nonzero(pixels, as_tuple=True)
            cell = int(ys.float().mean() * 3 // size) * 3 + int(xs.float().mean() * 3 // size)
            if slot == MAX_OBJECTS - 1:  # the centroid of a partly hidden object can move
                assert POSITION_NAMES[f["position"]] == POSITION_NAMES[cell]
            rgb = batch.images[i][:, pixels].float().T.numpy()
            if TEMPLATES[f["template"]] != "no_colour" and f["texture"] == 0:  # solid: every pixel one colour
                nearest = np.argmin(((colours - rgb.mean(0)) ** 2).sum(1))
                assert COLOUR_NAMES[nearest] == COLOUR_NAMES[f["colour"]]
                checked_colours += 1
            text = caption_text(cid).lower()
            assert SHAPES[f["shape"]] in text and POSITION_NAMES[f["position"]] in text
    assert checked_colours > 20


def test_vocabulary_round_trips():
    vocab = caption_vocabulary()
    assert len(vocab) == VOCABULARY_SIZE
    assert len(set(vocab)) < VOCABULARY_SIZE  # templates without texture / colour repeat texts
    with pytest.raises(ValueError, match="out of range"):
        decode_caption_id(VOCABULARY_SIZE)


def test_object_radii_change_only_the_sizes():
    # A diagnostic grid's --radii: same scenes (labels, shapes, captions), larger objects.
    from tcjepa.study.device_scenes import RADII

    base = render_block(0, "train", 5, 64)
    demo = render_block(0, "train", 5, 64, radii=((0.16, 0.2), (0.25, 0.3)))
    assert torch.equal(base.labels, demo.labels) and torch.equal(base.caption_ids, demo.caption_ids)
    main = lambda b: (b.instances == MAX_OBJECTS).sum((1, 2)).float()  # noqa: E731 - main object's pixels
    assert bool((main(demo) > main(base)).all())
    assert torch.equal(render_block(0, "train", 5, 64, radii=RADII).images, base.images)
    for bad in [((0.2, 0.1), (0.2, 0.25)), ((0.1, 0.2), (0.2, 0.6)), ((0.1,), (0.2, 0.3))]:
        with pytest.raises(ValueError, match="radii"):
            training_batch(0, 0, 0, 2, radii=bad)
