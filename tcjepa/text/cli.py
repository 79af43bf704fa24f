"""`text-cache` subcommand: precompute frozen text-encoder word features for a dataset.

The data CLI (`tcjepa-data`) mounts it with ``add_parser(subparsers)`` and dispatches to
``run(args)``. Example:

    tcjepa-data text-cache --data data/scenes --encoder minilm --max-words 64
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "text-cache",
        help="precompute text-encoder word features for every caption (resumable)",
        description="Encode every caption of a dataset once with the frozen text encoder and "
        "store fp16 word features in a memory-mapped cache keyed by caption id. "
        "Rerunning the same command resumes an interrupted build.",
    )
    p.add_argument("--data", required=True, type=Path, help="dataset folder holding the captions file")
    p.add_argument("--captions-file", default="captions.jsonl", help="captions file inside --data")
    p.add_argument("--encoder", default="minilm", help="'minilm', a local model folder, or a cached hub id")
    p.add_argument("--max-words", type=int, default=64, help="S: tokens kept per caption (longer ones are truncated)")
    p.add_argument("--out", type=Path, default=None, help="cache folder (default: <data>/text_cache/<encoder>)")
    p.add_argument("--batch-size", type=int, default=256, help="captions per encoder call and per saved chunk")
    p.add_argument("--no-resume", action="store_true", help="start over instead of continuing a partial build")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.set_defaults(func=run)
    return p


def default_cache_dir(data: Path, encoder: str) -> Path:
    """<data>/text_cache/<encoder>: a folder's own name, a hub id with '/' -> '--'."""
    name = Path(encoder).name if Path(encoder).expanduser().is_dir() else encoder.replace("/", "--")
    return Path(data) / "text_cache" / name


def load_caption_texts(data: Path, captions_file: str = "captions.jsonl") -> list[str]:
    """All captions of a dataset in caption-id order (image order, then caption order)."""
    from tcjepa.data.captions import CaptionedImageFolder

    return list(CaptionedImageFolder(data, captions_file=captions_file).caption_texts())


def run(args: argparse.Namespace) -> int:
    from ..device import resolve_device
    from .cache_build import build_text_cache
    from .encoder import FrozenTextEncoder

    device = str(resolve_device(args.device))
    out = args.out or default_cache_dir(args.data, args.encoder)
    source = Path(args.data) / args.captions_file
    try:
        captions = load_caption_texts(args.data, args.captions_file)
        encoder = FrozenTextEncoder(args.encoder, max_words=args.max_words, device=device)
        print(f"text-cache: {len(captions)} captions from {source} -> {out} "
              f"(encoder {args.encoder}, d_t={encoder.dim}, S={args.max_words}, {device})")
        t0 = time.perf_counter()
        build_text_cache(captions, out, encoder, batch_size=args.batch_size, resume=not args.no_resume)
        seconds = time.perf_counter() - t0
    except (ValueError, OSError, ImportError, FloatingPointError) as e:
        # Caption ids in these messages are positions in `source`'s caption list.
        # Exit code 2 = "fix your input", as for every tcjepa command (tcjepa.cli.errors).
        print(f"error: text-cache ({source}): {e}", file=sys.stderr)
        return 2
    meta = json.loads((Path(out) / "meta.json").read_text())
    print(f"text-cache: done, {meta['count']} captions in {seconds:.1f}s, "
          f"{meta['num_truncated']} truncated to {meta['max_words']} tokens, written to {out}")
    return 0
