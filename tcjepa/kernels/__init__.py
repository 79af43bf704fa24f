"""Fused GPU kernels (Triton) with eager PyTorch references; see ``text_xattn``."""
