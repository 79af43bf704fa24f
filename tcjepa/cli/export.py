"""tcjepa-export: training checkpoint -> encoder folder for timm and transformers.

    tcjepa-export runs/base/checkpoint-00010000.pt exports/base
    tcjepa-export runs/base exports/base              # newest intact checkpoint in the run
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tcjepa.export import ExportError, export_encoder
from tcjepa.train.checkpoint import CheckpointError, find_resume_checkpoint

from .help import document_defaults


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tcjepa-export",
        description="Export a trained encoder as safetensors for timm and transformers (IJepaModel).",
    )
    p.add_argument("checkpoint", type=Path, help="training checkpoint file, or a run folder (newest checkpoint)")
    p.add_argument("out_dir", type=Path, help="folder to write model.safetensors, config.json and hf/ into")
    p.add_argument(
        "--key", default="target_encoder",
        help="which encoder to export: target_encoder (EMA, default) or encoder (online)",
    )
    p.add_argument(
        "--allow-pickle", action="store_true",
        help="allow legacy checkpoints that need a full unpickle; this runs code from the file, "
        "so only use it for files you trust",
    )
    return document_defaults(p)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        ckpt = args.checkpoint
        if ckpt.is_dir():
            found = find_resume_checkpoint(ckpt)
            if found is None:
                raise CheckpointError(f"{ckpt}: the folder holds no checkpoint-*.pt")
            ckpt = found
        out = export_encoder(ckpt, args.out_dir, key=args.key, allow_pickle=args.allow_pickle)
    except (CheckpointError, ExportError) as e:
        print(f"tcjepa-export: error: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
