"""Data layer: synthetic scenes, captioned datasets, multi-block masks, resumable loader.

Submodules are imported on use (`from tcjepa.data.loader import build_pretrain_loader`), so
the data CLI starts without importing torch.
"""
