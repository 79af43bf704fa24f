"""The seeds x variants grid of the long-horizon study: resumable runs, one CSV row per checkpoint.

A task is (checkpoint k, variant, seed): train the run to the k-th evaluation step, evaluate
its target encoder on the held-out scenes (and, for text runs, the caption gap), append the
row to the run's ``eval.csv``, checkpoint. Tasks run in order of k, so every variant and
seed reaches the small budgets before any run goes further ("smallest cells first"), and
a killed grid restarts where it stopped: finished rows are skipped, a run resumes from its
last checkpoint (and retrains deterministically to a lost row's step).

Several processes share one device by taking runs round-robin (``shard``): run r belongs to
process r mod K, which keeps each run's tasks in order. With ``stack``, the runs of one code
path (``stack_groups``) train together as one vmapped step (``tcjepa.study.stacked``; the same
training to float rounding, on padded static-shape batches), and groups are dealt round-robin.
"""
from __future__ import annotations

import csv
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import Optional

import torch

from evals.longhorizon.evaluate import evaluate_encoder, evaluate_encoders
from evals.longhorizon.supervised import SupervisedRun
from evals.longhorizon.text_gap import text_gap
from evals.results import git_state, hardware
from tcjepa.study.device_scenes import heldout_set
from tcjepa.study.stacked import StackedRuns
from tcjepa.study.text_bank import TextBank, build_text_bank
from tcjepa.study.trainer import StudyRun
from tcjepa.study.variants import VARIANTS, StudySettings, run_config

FIELDS = ("variant", "seed", "step", "budget", "probe_top1", "seg_miou", "train_loss",
          "loss_true", "loss_shuffled", "text_gap", "text_gap_relative", "stated_share",
          "stated_0-0.05_gap", "stated_0.05-0.5_gap", "stated_0.5-1_gap",
          "stated_0-0.05_blocks", "stated_0.05-0.5_blocks", "stated_0.5-1_blocks", "blocks",
          "train_seconds", "eval_seconds", "threads", "commit", "dirty", "hardware", "command", "date")


def run_dir(work: Path, variant: str, seed: int) -> Path:
    return work / f"{variant}-s{seed}"


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def append_row(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in FIELDS})
        f.flush()
        os.fsync(f.fileno())


def write_plan(work: Path, settings: StudySettings, seeds: list[int], variants: list[str]) -> None:
    """The grid's settings, fixed at its first launch: a later launch must ask for the same."""
    # Every run's config must load before the settings are fixed: a bad --set caught only at
    # the first run would leave a plan that every corrected relaunch refuses.
    for name in variants:
        run_config(VARIANTS[name], settings, seeds[0] if seeds else 0, work / "runs")
    plan = {"settings": asdict(settings), "seeds": seeds, "variants": variants}
    path = work / "plan.json"
    if path.is_file():
        old = json.loads(path.read_text())
        # A setting added after a grid started is read at what that grid ran with.
        old["settings"] = {**_setting_defaults(), **_BEFORE_THE_SETTING, **old["settings"]}
        if old["settings"] != json.loads(json.dumps(plan["settings"])):
            raise SystemExit(f"{path}: this grid was started with other settings ({old['settings']}); "
                             f"use another --work folder")
        plan["seeds"] = sorted(set(old["seeds"]) | set(seeds))
        plan["variants"] = list(dict.fromkeys([*old["variants"], *variants]))
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plan, indent=1) + "\n")


# Settings whose protocol value changed when they became settings: what a grid started before
# ran with. Any other setting added later was its default all along.
_BEFORE_THE_SETTING = {"lr": [0.0002, 0.001]}


def _setting_defaults() -> dict:
    found = {}
    for f in fields(StudySettings):
        if f.default is not MISSING:
            found[f.name] = f.default
        elif f.default_factory is not MISSING:
            found[f.name] = f.default_factory()
    return json.loads(json.dumps(found))


def stack_groups(runs: list[tuple[str, int]]) -> list[list[tuple[str, int]]]:
    """(variant, seed) runs grouped by code path, in grid order: variants whose configs are equal
    (text on or off, the same model overrides) differ only in data (shuffled captions) or in the
    optimizer's state (the Adam boost), which a stacked step keeps per run. A run of another
    objective (the supervised reference) is a group of its own."""
    groups: dict[tuple, list[tuple[str, int]]] = {}
    for variant, seed in runs:
        v = VARIANTS[variant]
        key = (v.text, v.overrides) if v.objective == "jepa" else (variant, seed)
        groups.setdefault(key, []).append((variant, seed))
    return list(groups.values())


def stackable(unit: list[tuple[str, int]]) -> bool:
    return VARIANTS[unit[0][0]].objective == "jepa"


class Grid:
    def __init__(self, work: Path, settings: StudySettings, seeds: list[int], variants: list[str],
                 device: str = "cpu", shard: tuple[int, int] = (0, 1), heldout: int = 4000,
                 gap_scenes: int = 512, ckpt_every: int = 100, text_bank: Optional[Path] = None,
                 eval_options: Optional[dict] = None, log=print, stack: bool = False):
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown:
            raise SystemExit(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
        self.work, self.settings, self.device = work, settings, torch.device(device)
        self.runs = [(v, s) for v in variants for s in seeds]
        self.stack = stack
        units = stack_groups(self.runs) if stack else [[r] for r in self.runs]
        self.units = [u for i, u in enumerate(units) if i % shard[1] == shard[0]]
        self.mine = [r for u in self.units for r in u]
        self.heldout_count, self.gap_scenes, self.ckpt_every = heldout, gap_scenes, ckpt_every
        self.text_bank_path = text_bank or work / "text_bank"
        self.log = log
        self.eval_options = eval_options or {}
        commit, dirty = git_state()
        if os.environ.get("TCJEPA_COMMIT"):  # a copy without .git (a remote GPU machine): the launcher names it
            commit, dirty = os.environ["TCJEPA_COMMIT"], os.environ.get("TCJEPA_DIRTY") == "1"
        self.meta = {"commit": commit or "unknown", "dirty": dirty,
                     "hardware": hardware() if self.device.type == "cuda" else f"{hardware()}, {platform.node()}",
                     "command": " ".join(["python -m evals.longhorizon.study", shlex.join(sys.argv[1:])]),
                     "threads": torch.get_num_threads()}
        self._heldout = self._bank = None

    # Built on first use: a process whose tasks are all done renders nothing.
    def heldout(self):
        if self._heldout is None:
            s = self.settings
            self._heldout = heldout_set(s.data_seed, self.heldout_count, s.image_size, s.num_captions,
                                        device=self.device, radii=s.object_radii)
        return self._heldout

    def bank(self) -> TextBank:
        if self._bank is None:
            self._bank = TextBank.from_cache(build_text_bank(self.text_bank_path), self.device)
        return self._bank

    def tasks(self) -> list[tuple[int, str, int]]:
        return [(k, v, s) for k in range(len(self.settings.eval_steps)) for v, s in self.mine]

    def done(self, variant: str, seed: int, step: int) -> bool:
        return any(int(r["step"]) == step for r in read_rows(run_dir(self.work, variant, seed) / "eval.csv"))

    def run_all(self, until: Optional[int] = None) -> int:
        """Do every missing task (up to checkpoint step ``until``); returns how many were done."""
        todo = [t for t in self.tasks() if not self.done(t[1], t[2], self.settings.eval_steps[t[0]])
                and (until is None or self.settings.eval_steps[t[0]] <= until)]
        self.log(f"{len(todo)} of {len(self.tasks())} tasks to do in {self.work}"
                 + (f", runs stacked in {len(self.units)} groups" if self.stack else ""))
        done = 0
        for k, step in enumerate(self.settings.eval_steps):
            for unit in self.units:
                # Checked again here: another process (a pilot) may have done a task since.
                missing = [(v, s) for v, s in unit if (k, v, s) in todo and not self.done(v, s, step)]
                if missing:
                    if self.stack and stackable(unit):
                        self.run_group_task(missing, step)
                    else:
                        self.run_task(*missing[0], step)
                    done += len(missing)
        return done

    def _resumed(self, variant: str, seed: int, step: int) -> StudyRun | SupervisedRun:
        """The run from its latest checkpoint, which must not be past the missing row's ``step``."""
        v = VARIANTS[variant]
        run = (StudyRun if v.objective == "jepa" else SupervisedRun)(v, self.settings, seed, run_dir(self.work, variant, seed), self.bank() if v.text else None,
                       self.device, static_shapes=self.stack)
        if run.resume() > step:
            raise SystemExit(f"{run.out_dir}: checkpoint at step {run.step} is past the missing row of step {step}; "
                             f"delete the folder to redo the run")
        return run

    def _train_in_chunks(self, trainer, step: int, save) -> Optional[dict]:
        """``trainer.advance`` to ``step``, checkpointing (``save()``) every ``ckpt_every`` steps."""
        out = None
        while trainer.step < step:
            out = trainer.advance(min(step, (trainer.step // self.ckpt_every + 1) * self.ckpt_every))
            if trainer.step < step:
                save()
        return out

    def run_task(self, variant: str, seed: int, step: int) -> dict:
        run = self._resumed(variant, seed, step)
        t0 = time.time()
        out = self._train_in_chunks(run, step, run.save)
        loss = None if out is None else out["loss"].detach().item()
        return self.record(run, step, loss, time.time() - t0)

    def run_group_task(self, members: list[tuple[str, int]], step: int) -> list[dict]:
        """The missing rows of one stacked group at ``step``: its runs trained together."""
        runs = [self._resumed(v, s, step) for v, s in members]
        t0 = time.time()
        start = max(run.step for run in runs)
        for run in runs:  # a run behind the others (an older checkpoint) catches up alone
            run.advance(start)
        group = StackedRuns(runs)

        def save():
            group.sync_runs()
            for run in runs:
                run.save()

        out = self._train_in_chunks(group, step, save)
        group.sync_runs()
        seconds = time.time() - t0  # the group's: every row of it records the same training time
        # The group's encoders are evaluated together (their segmentation heads in one loop);
        # each row records that shared time plus its own caption gap.
        t1 = time.time()
        scored = [run for run in runs if self.evaluated(run, step)]
        results = {}
        if scored:
            results = dict(zip([id(r) for r in scored], evaluate_encoders(
                [r.evaluated_encoder for r in scored], self.heldout(), [r.seed for r in scored],
                **self.eval_options)))
        shared = time.time() - t1
        return [self.record(run, step, None if out is None else out["loss"][g].item(), seconds,
                            results.get(id(run), {}), shared)
                for g, run in enumerate(runs)]

    @staticmethod
    def evaluated(run: StudyRun, step: int) -> bool:
        """Step 0 is the untrained encoder, the same for every variant of a seed: evaluated once,
        in the I-JEPA run (the report names that row "untrained")."""
        return step > 0 or run.variant.name == "ijepa"

    def record(self, run: StudyRun, step: int, train_loss: Optional[float], train_seconds: float,
               evaluation: Optional[dict] = None, eval_seconds: float = 0.0) -> dict:
        """Evaluate the run at ``step`` (unless ``evaluation`` holds its probe and segmentation
        results), append its row, checkpoint it."""
        variant, seed, v, folder = run.variant.name, run.seed, run.variant, run.out_dir
        t1 = time.time()
        row = {"variant": variant, "seed": seed, "step": step, "budget": self.settings.budget,
               "train_loss": "" if train_loss is None else train_loss}
        if evaluation is not None:
            row.update(evaluation)
        elif self.evaluated(run, step):
            row.update(evaluate_encoder(run.evaluated_encoder, self.heldout(), seed, **self.eval_options))
        if v.text:
            held = self.heldout()
            fit = len(held) // 2
            row.update(text_gap(run, held.select(slice(fit, fit + self.gap_scenes))))
        row.update(self.meta, train_seconds=round(train_seconds, 1),
                   eval_seconds=round(eval_seconds + time.time() - t1, 1),
                   date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        append_row(folder / "eval.csv", row)
        run.save()
        self.log(f"{variant} seed {seed} step {step}: probe {row.get('probe_top1', '-')} "
                 f"mIoU {row.get('seg_miou', '-')} gap {row.get('text_gap', '-')} "
                 f"({train_seconds:.0f} s train, {row['eval_seconds']} s eval)")
        return row
