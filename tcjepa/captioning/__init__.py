"""Captions for any image collection from a local vision-language model (``tcjepa-data captions``).

families.py picks the model family from its config and knows how to prompt it; prompts.yaml
holds the questions; generation.py asks for N distinct captions and cleaning.py filters them;
sources.py reads folders, ImageNet trees and shards; writer.py writes resumable chunks and
merges them; run.py runs a job (torchrun-aware); stats.py summarises a caption set; cli.py
holds both subcommands; random_models.py writes random-weight models for tests and benchmarks.
"""
