"""Backbone plugins. Importing this package registers every backbone below."""
from .base import (  # noqa: F401
    Backbone,
    BackboneSpec,
    CheckpointError,
    UserError,
    available_backbones,
    build_backbone,
    describe_backbones,
    register_backbone,
)
from . import dinov2, ijepa, siglip2, tcjepa  # noqa: F401,E402  (each registers itself)
