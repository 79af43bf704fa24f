"""The long-horizon study (results/studies/long-horizon/PROTOCOL.md): run the grid, write the report.

    python -m evals.longhorizon.study run --work runs/long-horizon/cpu-lr1e-4 --budget 1000
    python -m evals.longhorizon.study run --work runs/long-horizon/gpu --budget 20000 --device cuda --workers 6
    python -m evals.longhorizon.study report --work runs/long-horizon/cpu-lr1e-4 --out results/studies/long-horizon/cpu-lr1e-4
    python -m evals.longhorizon.study run --work runs/long-horizon/diag-supervised --variants supervised   # the reference
    python -m evals.longhorizon.study report --work runs/long-horizon/diag-supervised runs/long-horizon/cpu-lr1e-4 \
        --variants ijepa supervised --out results/studies/long-horizon/diagnostics/supervised
    python -m evals.longhorizon.study gap-check --work runs/long-horizon/cpu-lr1e-4 --step 250   # the caption gap there
    python -m evals.longhorizon.study speed --work runs/long-horizon/cpu-lr1e-4 --threads 1    # steps/s per variant
    python -m evals.longhorizon.study speed --work runs/long-horizon/gpu --device cuda --stack 6   # stacked runs

``run`` is resumable: run it again (same settings) and it continues where it stopped.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from tcjepa.study.variants import VARIANTS, StudySettings, default_eval_steps

GRID_VARIANTS = ("ijepa", "tc_paper", "tc_shuffled", "tc_centered", "tc_centered_shuffled", "ijepa_adam2500")


def log(msg: str) -> None:
    print(f"[long-horizon {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _settings(args) -> StudySettings:
    steps = tuple(args.eval_steps) if args.eval_steps else default_eval_steps(args.budget)
    return StudySettings(budget=args.budget, eval_steps=steps, batch_size=args.batch_size,
                         image_size=args.image_size, ema=tuple(args.ema), lr=tuple(args.lr),
                         extra_overrides=tuple(args.set),
                         object_radii=(tuple(args.radii[:2]), tuple(args.radii[2:])))


def set_threads(requested: int, device: str, processes: int = 1) -> None:
    """``requested`` intra-op threads; by default (0) on a CPU the idle cores (on a busy 2-core
    machine one thread ran the study's step ~6x faster than two: OpenMP threads wait on
    descheduled siblings, the text cache builder's finding too), and with a GPU shared by
    ``processes`` workers, their share of the host's cores."""
    import torch

    from tcjepa.device import fit_threads_to_idle_cores

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if requested:
        torch.set_num_threads(requested)
    elif device == "cpu":
        fit_threads_to_idle_cores()
    else:
        torch.set_num_threads(max(1, cpus // processes))


def _spawn_workers(args, argv: list[str]) -> int:
    """K copies of this command, each with --shard i/K; they share the device."""
    procs = []
    for i in range(args.workers):
        cmd = [sys.executable, "-m", "evals.longhorizon.study", *argv, "--workers", "1", "--shard", f"{i}/{args.workers}"]
        logf = open(Path(args.work) / f"worker{i}.log", "a")
        procs.append((subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT), logf))
    codes = [p.wait() for p, _ in procs]
    for _, f in procs:
        f.close()
    return max(codes)


def cmd_run(args, argv: list[str]) -> int:
    from evals.longhorizon.grid import Grid, write_plan

    settings = _settings(args)
    work = Path(args.work)
    if args.shard == "0/1":  # the launching process; the workers it spawns find the plan written
        write_plan(work, settings, args.seeds, args.variants)
    if args.workers > 1:
        return _spawn_workers(args, argv)
    i, k = (int(x) for x in args.shard.split("/"))
    set_threads(args.threads, args.device, k)
    grid = Grid(work, settings, args.seeds, args.variants, device=args.device, shard=(i, k),
                heldout=args.heldout, gap_scenes=args.gap_scenes, ckpt_every=args.ckpt_every, log=log,
                stack=args.stack)
    grid.run_all(args.until)
    return 0


def cmd_report(args) -> int:
    from evals.longhorizon.report import write_report

    rows = write_report([Path(w) for w in args.work], Path(args.out), args.variants)
    log(f"{len(rows)} rows -> {args.out}")
    return 0


def cmd_speed(args) -> int:
    import torch

    from tcjepa.study.text_bank import TextBank, build_text_bank
    from tcjepa.study.trainer import StudyRun, steps_per_second

    set_threads(args.threads, args.device)
    settings = _settings(args)
    bank = TextBank.from_cache(build_text_bank(Path(args.work) / "text_bank"), args.device)
    where = f"batch {settings.batch_size}, {torch.get_num_threads()} threads, {args.device}"
    for name in args.variants:
        folder = Path(args.work) / "speed" / name
        run = StudyRun(VARIANTS[name], settings, 0, folder, bank, args.device)
        print(f"{name}: {steps_per_second(run, args.steps):.3f} steps/s ({where})", flush=True)
        if args.stack:
            from tcjepa.study.stacked import StackedRuns

            padded = StudyRun(VARIANTS[name], settings, 0, folder, bank, args.device, static_shapes=True)
            print(f"{name}, static shapes: {steps_per_second(padded, args.steps):.3f} steps/s ({where})", flush=True)
            group = StackedRuns([StudyRun(VARIANTS[name], settings, seed, folder, bank, args.device, static_shapes=True)
                                 for seed in range(args.stack)])
            rate = steps_per_second(group, args.steps)
            print(f"{name}, {args.stack} runs stacked: {rate * args.stack:.3f} run-steps/s ({rate:.3f} steps/s of "
                  f"the group; {where})", flush=True)
    if args.stack:
        _time_evaluation(group, settings, args.stack, f"{torch.get_num_threads()} threads, {args.device}")
    return 0


def _time_evaluation(group, settings: StudySettings, count: int, where: str) -> None:
    """Seconds to evaluate one checkpoint (probe + segmentation on the held-out scenes): one
    encoder alone, then ``count`` together (a stacked group's)."""
    from evals.longhorizon.evaluate import evaluate_encoders
    from tcjepa.study.device_scenes import heldout_set

    group.sync_runs()
    encoders = [r.evaluated_encoder for r in group.runs]
    held = heldout_set(settings.data_seed, 4000, settings.image_size, settings.num_captions,
                       device=group.device, radii=settings.object_radii)
    for n in (1, count):
        t0 = time.perf_counter()
        evaluate_encoders(encoders[:n], held, [r.seed for r in group.runs[:n]])
        print(f"evaluation of {n} encoder{'s together' if n > 1 else ''}: {time.perf_counter() - t0:.1f} s ({where})",
              flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evals.longhorizon.study", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("run", "speed"):
        s = sub.add_parser(name)
        s.add_argument("--work", required=True, help="runs folder (checkpoints, eval.csv per run, the text bank)")
        s.add_argument("--budget", type=int, default=1000, help="steps per run (the schedules span them)")
        s.add_argument("--eval-steps", type=int, nargs="+", help="checkpoints to evaluate (default: 0 and budget/16 .. budget)")
        s.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
        s.add_argument("--variants", nargs="+", default=list(GRID_VARIANTS), choices=sorted(VARIANTS))
        s.add_argument("--batch-size", type=int, default=64)
        s.add_argument("--image-size", type=int, default=64)
        s.add_argument("--device", default="cpu")
        s.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default; on a CPU, its idle cores)")
        # Not the protocol's grid: for diagnostic grids in their own --work folder (the plan
        # there records them, so a later launch must ask for the same).
        s.add_argument("--ema", type=float, nargs=2, default=list(StudySettings.ema), metavar=("START", "END"),
                       help="target-encoder EMA momentum, linear from START to END over the budget (default, the protocol's: 0.98 1.0)")
        s.add_argument("--lr", type=float, nargs=2, default=list(StudySettings.lr), metavar=("START", "PEAK"),
                       help="lr warm-up from START to PEAK, then cosine to 1e-6 (default, the protocol's since "
                            "its one change: %(default)s; the grid before it: 0.0002 0.001)")
        s.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                       help="extra pretraining-config overrides for every run (default, the protocol's: none), e.g. optim.lr=0.002")
        s.add_argument("--radii", type=float, nargs=4, default=[*StudySettings.object_radii[0], *StudySettings.object_radii[1]],
                       metavar=("SMALL_LO", "SMALL_HI", "LARGE_LO", "LARGE_HI"),
                       help="object radii of training and held-out scenes, fractions of the image side "
                            "(default, the protocol's: %(default)s; the embedded demo family's: 0.16 0.2 0.25 0.3)")
    run = sub.choices["run"]
    run.add_argument("--workers", type=int, default=1, help="processes sharing the device, runs dealt round-robin")
    run.add_argument("--shard", default="0/1", help=argparse.SUPPRESS)
    run.add_argument("--heldout", type=int, default=4000, help="held-out scenes: first half fits the heads")
    run.add_argument("--gap-scenes", type=int, default=512, help="held-out scenes for the caption gap")
    run.add_argument("--ckpt-every", type=int, default=100)
    run.add_argument("--until", type=int, help="stop after the checkpoints up to this step (e.g. the caption-gap pilot)")
    run.add_argument("--stack", action="store_true",
                     help="train the runs of one code path as one vmapped step (tcjepa.study.stacked; for a GPU, "
                          "where a step is launch-bound: the same runs to float rounding, on padded batches)")
    sub.choices["speed"].add_argument("--steps", type=int, default=5)
    sub.choices["speed"].add_argument("--stack", type=int, default=0, metavar="G",
                                      help="also time the padded single run and G runs stacked (run-steps/s), and the "
                                           "evaluation of one checkpoint alone and of G together")
    rep = sub.add_parser("report", help="runs.csv, summary, verdict, overview and curves of one grid's rows, or of "
                                        "several grids' (a diagnostic beside the protocol grid's runs)")
    rep.add_argument("--work", required=True, nargs="+", help="the grids' runs folders")
    rep.add_argument("--out", required=True)
    rep.add_argument("--variants", nargs="+", choices=sorted(VARIANTS),
                     help="report these variants only (default: every variant with rows); untrained comes with ijepa")
    gap = sub.add_parser("gap-check", help="the protocol's pre-run check on the caption gap (exit 0 pass, 3 fail, 4 no row)")
    gap.add_argument("--work", required=True)
    gap.add_argument("--step", type=int, required=True)
    gap.add_argument("--threshold", type=float, default=0.02)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    if args.command == "run":
        forwarded = [a for i, a in enumerate(argv) if a not in ("--workers",) and (i == 0 or argv[i - 1] != "--workers")]
        return cmd_run(args, forwarded)
    if args.command == "gap-check":
        from evals.longhorizon.report import gap_check

        code, message = gap_check(Path(args.work), args.step, args.threshold)
        log(message)
        return code
    return cmd_report(args) if args.command == "report" else cmd_speed(args)


if __name__ == "__main__":
    sys.exit(main())
