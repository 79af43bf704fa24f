from tcjepa.train.monitors import grounding_collapse_warning


def test_grounding_collapse_warning_fires_only_when_every_layer_is_at_zero():
    assert grounding_collapse_warning(5, [0.0, 0.002], 0.1, 0.5) is None
    assert grounding_collapse_warning(5, [], 0.1, 0.5) is None  # no conditioned layer
    assert grounding_collapse_warning(5, [0.0, 0.0], 0.0, 0.0) is None  # regularizers off anyway
    message = grounding_collapse_warning(11, [0.0, 1e-4, 0.0], 0.1, 0.5)
    assert message.startswith("step 11:") and "grounding_keys=centered" in message
