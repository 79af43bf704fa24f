"""Every shell command in README.md's code blocks runs as written, so the README cannot drift.

The commands run in order in one scratch folder (``configs/`` linked in), so they share one
tiny generated dataset and one tiny trained run, as a reader following the README would.
What a 2-core machine cannot afford is adjusted through three short tables below, each entry
with its reason: ``SUBSTITUTE`` (real data and weights -> generated ones), ``SHRINK``
(arguments appended to make a command tiny; for argparse options and ``key=value`` overrides
the last one wins) and ``NOT_RUN`` (commands that need real data, GPUs or an hour, with what
is checked instead). A new README command runs as written unless an entry says otherwise.

Every command's ``--help`` (each subcommand too) must exit 0, give every option a help text
and name every default.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TRACEBACK = "Traceback (most recent call last)"

# README text -> what runs here (the real datasets and weights are not on a test machine).
SUBSTITUTE = [
    ("/models/dinov2-base", "models/dinov2-base"),  # a random-weight DINOv2 in HF format, made below
    ("/data/coco", "data/scenes/coco"),  # the generated scenes' COCO tree
]
# Command prefix -> arguments appended to keep it within seconds on 2 cores.
SHRINK = {
    "tcjepa-data scenes": "--train 40 --val 12 --workers 1 --quiet",
    "tcjepa-data masks": "--batches 2 --batch-size 8",
    "tcjepa-data to-wds": "--quiet",
    "tcjepa-data captions": "--max-new-tokens 8 --quiet",
    "tcjepa-data transfer": "--train 8 --val 4",
    "tcjepa-train --config configs/cpu/": "optim.max_steps=2 optim.batch_size=8 optim.warmup_epochs=0 "
                                          "data.num_workers=0 train.ckpt_every=2 train.log_every=1",
    "tcjepa-eval linear": "--epochs 1 --lrs 0.1 --workers 0",
    "torchrun --nproc_per_node 2 -m evals.cli linear": "--epochs 1 --lrs 0.1 --workers 0",
    "tcjepa-eval knn": "--workers 0",
    "tcjepa-eval attentive": "--epochs 1 --workers 0",
    "tcjepa-eval ade20k": "--iters 2 --warmup-iters 1 --crop-size 64 --batch-size 2",
    "tcjepa-eval coco": "--max-iters 1 --warmup-iters 1 --min-size 56 --max-size 56 --image-size 56 "
                        "--pyramid-channels 16 --rois-per-image 16 --max-val-images 2",
}
# Command prefix -> (why it is not run, what is checked instead: 'config' loads the training
# config with the command's overrides, 'skip' checks nothing).
NOT_RUN = {
    "make demo": ("builds .venv and runs the 15-minute demo (tests/e2e runs its pieces)", "skip"),
    "make test": ("is the test suite itself", "skip"),
    ".venv/bin/python -m evals.demo --seeds": ("a multi-seed study, about an hour on 2 cores", "skip"),
    ".venv/bin/python -m evals.ablations": ("the ablation study, hours on 2 cores", "skip"),
    "tcjepa-train --config configs/pretrain/": ("ViT-L/H pretraining on ImageNet needs the data and GPUs", "config"),
    "torchrun --nproc_per_node 8": ("needs 8 GPUs", "config"),
}
# Without the OpenMMLab stack the mm engines cannot run; their fallbacks run the same protocol.
MM_FALLBACK = {"--engine mmseg": "--engine torch", "--engine mmdet": "--engine torchvision"}


def readme_commands(text: str) -> list[str]:
    """Shell commands of the ```bash / sh / shell / console blocks, comments dropped."""
    commands = []
    for block in re.findall(r"```(?:bash|sh|shell|console)\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(shlex.join(words))
    return commands


def console_scripts() -> dict[str, str]:
    """Console script name -> 'module:function', from pyproject.toml."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def mm_installed() -> bool:
    try:
        import mmdet  # noqa: F401
        import mmseg  # noqa: F401
    except ImportError:
        return False
    return True


def prepared(command: str) -> str:
    for text, replacement in SUBSTITUTE:
        command = command.replace(text, replacement)
    if not mm_installed():
        for text, replacement in MM_FALLBACK.items():
            command = command.replace(text, replacement)
    extra = next((v for k, v in SHRINK.items() if command.startswith(k)), "")
    return f"{command} {extra}".strip()


def argv_of(command: str) -> list[str]:
    words = shlex.split(command)
    scripts = console_scripts()
    if words[0] in scripts:
        installed = Path(sys.executable).parent / words[0]
        if installed.exists():
            return [str(installed), *words[1:]]
        module, function = scripts[words[0]].split(":")
        return [sys.executable, "-c", f"import sys; from {module} import {function} as f; sys.exit(f())", *words[1:]]
    if words[0] in ("python", ".venv/bin/python", "python3"):
        return [sys.executable, *words[1:]]
    if words[0] == "torchrun":  # the venv's, launching the venv's python
        return [str(Path(sys.executable).parent / "torchrun"), *words[1:]]
    return words


def config_only_check(command: str) -> None:
    """Load the training config the command names, with its overrides (strict keys)."""
    from tcjepa.config import load_config

    words = shlex.split(command)
    config = words[words.index("--config") + 1]
    load_config(ROOT / config, [w for w in words if "=" in w and not w.startswith("-")])


def make_fixtures(work: Path) -> None:
    """Weights the README names as local paths: random-weight models in the official format."""
    from transformers import Dinov2Config, Dinov2Model

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                          image_size=56, patch_size=14)
    Dinov2Model(config).save_pretrained(work / "models" / "dinov2-base")


COMMANDS = readme_commands(README.read_text())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    work = tmp_path_factory.mktemp("readme")
    (work / "configs").symlink_to(ROOT / "configs")
    make_fixtures(work)
    return work


def test_readme_has_commands():
    assert any(c.startswith("tcjepa-eval") for c in COMMANDS) and any(c.startswith("tcjepa-train") for c in COMMANDS)


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_runs_as_written(command, workdir):
    reason = next((v for k, v in NOT_RUN.items() if command.startswith(k)), None)
    if reason is not None:
        why, check = reason
        if check == "config":
            config_only_check(command)
        pytest.skip(f"not run: {why}" + (" (its config and overrides were loaded)" if check == "config" else ""))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env["CUDA_VISIBLE_DEVICES"] = ""  # the same on every machine: the CPU path
    env["OMP_NUM_THREADS"] = "1"  # tiny models on shared cores: extra threads only wait for each other
    run = subprocess.run(argv_of(prepared(command)), cwd=workdir, env=env, capture_output=True, text=True,
                         timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode == 0 and TRACEBACK not in output, \
        f"{prepared(command)!r} exited {run.returncode}:\n{output[-3000:]}"


# ----------------------------------------------------------------------------- --help


def parsers_printing_help(main, argv: list[str], monkeypatch) -> list[argparse.ArgumentParser]:
    """Run ``main(argv + ['--help'])`` in this process; the parsers that printed help."""
    printed = []
    original = argparse.ArgumentParser.print_help

    def record(self, file=None):
        printed.append(self)
        return original(self, file)

    monkeypatch.setattr(argparse.ArgumentParser, "print_help", record)
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code in (0, None), f"{argv} --help exited {e.value.code}"
    return printed


def subcommands(parser: argparse.ArgumentParser) -> list[str]:
    return [name for a in parser._actions if isinstance(a, argparse._SubParsersAction) for name in a.choices]


@pytest.mark.parametrize("script", sorted(console_scripts()))
def test_every_option_has_help_and_shows_its_default(script, monkeypatch, capsys):
    from tcjepa.cli.help import shown_default

    module, function = console_scripts()[script].split(":")
    main = getattr(__import__(module, fromlist=[function]), function)
    (top,) = parsers_printing_help(main, [], monkeypatch)
    problems = []
    for sub in [None, *subcommands(top)]:
        for parser in parsers_printing_help(main, [sub] if sub else [], monkeypatch):
            for action in parser._actions:
                if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
                    continue
                name = "/".join(action.option_strings) or action.dest
                if not action.help:
                    problems.append(f"{script} {sub or ''} {name}: no help text")
                elif shown_default(action) and "default" not in action.help:
                    problems.append(f"{script} {sub or ''} {name}: help does not show the default {action.default!r}")
    assert TRACEBACK not in capsys.readouterr().err
    assert not problems, "\n".join(problems)


class Parsed(Exception):
    """Raised once a command line has parsed, so the example does not run."""


def help_examples(main, script: str, monkeypatch) -> list[str]:
    """Command lines shown in ``script --help`` (and its subcommands' --help)."""
    examples = []
    for sub in [None, *subcommands(parsers_printing_help(main, [], monkeypatch)[0])]:
        for parser in parsers_printing_help(main, [sub] if sub else [], monkeypatch):
            examples += re.findall(rf"^\s+({re.escape(script)} .*?)\s*(?:#.*)?$", parser.format_help(), flags=re.M)
    return list(dict.fromkeys(examples))


@pytest.mark.parametrize("script", sorted(console_scripts()))
def test_help_examples_parse(script, monkeypatch, capsys):
    """Every example in a command's --help names real subcommands and options ('...' stands
    for the rest of a command line and is dropped)."""
    module, function = console_scripts()[script].split(":")
    main = getattr(__import__(module, fromlist=[function]), function)
    examples = help_examples(main, script, monkeypatch)
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        original(self, args, namespace)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    for example in examples:
        argv = [w for w in shlex.split(example)[1:] if w != "..."]
        missing = [w for w in argv if w.startswith("configs/") and not (ROOT / w).exists()]
        assert not missing, f"`{example}` from {script} --help names files that do not exist: {missing}"
        try:
            main(argv)
        except Parsed:
            continue
        except SystemExit as e:
            pytest.fail(f"`{example}` from {script} --help does not parse (exit {e.code}): {capsys.readouterr().err}")
        pytest.fail(f"`{example}` from {script} --help did not reach its parser")
