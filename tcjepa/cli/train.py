"""tcjepa-train: pretrain TC-JEPA (or I-JEPA with text.enabled=false).

    tcjepa-train --config configs/cpu/scenes_tcjepa.yaml
    tcjepa-train --config configs/pretrain/vit_l16_in1k.yaml data.root=/data/in1k optim.batch_size=1024
    torchrun --nproc_per_node 8 -m tcjepa.cli.train --config ... train.distributed=fsdp
"""
from __future__ import annotations

import argparse
import logging
import sys

from ..config import ConfigError, load_config
from .errors import run_cli
from .rank_exit import exit_rank
from .help import document_defaults

EPILOG = """\
Overrides are key=value with dotted keys, values parsed as YAML, e.g.
  model.caption_pool=mean  data.num_captions=4  mask.target_scale=[0.1,0.15]  train.resume=none
Unknown keys and wrong types are errors. A killed run resumes from its newest valid
checkpoint in train.out_dir (train.resume=auto, the default).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tcjepa-train",
        description="Pretrain a TC-JEPA / I-JEPA encoder on image-caption data.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="YAML config (configs/...); defaults are the paper's ViT-B/16 settings")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--max-steps-this-run", type=int, default=None,
                   help="stop after this many steps (the run stays resumable)")
    return document_defaults(p)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    def run() -> int:
        for o in args.overrides:
            if "=" not in o:
                raise ConfigError(f"argument {o!r}: expected key=value (did you mean --config {o}?)")
        cfg = load_config(args.config, args.overrides)
        from ..models.vit import VIT_ARCHS

        if cfg.model.encoder not in VIT_ARCHS:  # caught here, before data and text are loaded
            raise ConfigError(f"model.encoder={cfg.model.encoder!r} is not a registered ViT; "
                              f"available: {sorted(VIT_ARCHS)}")
        if args.print_config:
            import yaml

            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            return 0
        from ..train.loop import train

        train(cfg, max_steps_this_run=args.max_steps_this_run)
        return 0

    return exit_rank(run_cli(run))


if __name__ == "__main__":
    sys.exit(main())
