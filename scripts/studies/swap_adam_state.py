"""Edit the encoder's Adam state in a checkpoint: take it from another run, or scale it.

    python scripts/studies/swap_adam_state.py swap <into run>/checkpoint-00000012.pt \
        <from run>/checkpoint-00000012.pt [--moments exp_avg,exp_avg_sq]
    python scripts/studies/swap_adam_state.py scale <run>/checkpoint-00000012.pt 2500
    python scripts/studies/swap_adam_state.py compare <run a>/checkpoint-00000012.pt \
        <run b>/checkpoint-00000012.pt

``swap`` replaces the named moments (default both) of every encoder tensor by the other run's
at the same step; ``scale`` multiplies every encoder tensor's second moment (exp_avg_sq) by a
factor (2500 = 50x in sqrt, Adam's divisor). The checkpoint is rewritten in place; its weights,
the predictor's optimizer state, the sampler and the RNG stay as they were. Resuming the run
(same command and overrides) then trains the encoder with the edited optimizer memory.
``compare`` prints, per tensor both runs have, the ratio a / b of mean sqrt(exp_avg_sq) and of
mean |exp_avg|.
"""
import argparse

import torch


def load(path: str) -> dict:
    return torch.load(path, weights_only=True, map_location="cpu")


def encoder_states(ckpt: dict) -> dict:
    return {name: state for name, state in ckpt["opt"]["state"].items() if name.startswith("encoder.")}


def swap(into: str, source: str, moments: str) -> None:
    ckpt, other = load(into), load(source)
    if ckpt["step"] != other["step"]:
        raise SystemExit(f"{into} is at step {ckpt['step']}, {source} at step {other['step']}")
    states = encoder_states(ckpt)
    for name, state in states.items():
        for key in moments.split(","):
            state[key] = other["opt"]["state"][name][key].clone()
    torch.save(ckpt, into)
    print(f"{into}: {moments} of {len(states)} encoder tensors taken from {source}")


def scale(path: str, factor: float) -> None:
    ckpt = load(path)
    states = encoder_states(ckpt)
    for state in states.values():
        state["exp_avg_sq"].mul_(factor)
    torch.save(ckpt, path)
    print(f"{path}: exp_avg_sq of {len(states)} encoder tensors multiplied by {factor}")


def compare(a: str, b: str) -> None:
    sa, sb = load(a)["opt"]["state"], load(b)["opt"]["state"]
    for name in sorted(sa.keys() & sb.keys()):
        v = sa[name]["exp_avg_sq"].sqrt().mean() / sb[name]["exp_avg_sq"].sqrt().mean()
        m = sa[name]["exp_avg"].abs().mean() / sb[name]["exp_avg"].abs().mean()
        print(f"{name:60} sqrt(v) {v.item():10.2f}   |m| {m.item():10.2f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("swap")
    s.add_argument("into")
    s.add_argument("source")
    s.add_argument("--moments", default="exp_avg,exp_avg_sq")
    c = sub.add_parser("scale")
    c.add_argument("path")
    c.add_argument("factor", type=float)
    r = sub.add_parser("compare")
    r.add_argument("a")
    r.add_argument("b")
    args = p.parse_args()
    if args.command == "swap":
        swap(args.into, args.source, args.moments)
    elif args.command == "scale":
        scale(args.path, args.factor)
    else:
        compare(args.a, args.b)
