"""``tcjepa-eval TASK --config FILE [key=value ...]``: protocol settings from YAML.

A config file is a flat mapping of the task's option names (``lrs``, ``epochs``,
``crop_size``, ... as in ``--help``, dashes or underscores) plus an optional ``command:``
naming the task it is written for; ``base: other.yaml`` starts from another file, as
training configs do (``tcjepa.config``). Unknown keys and values of the wrong type are
errors naming the file and the key. Precedence: built-in defaults < the file <
``key=value`` overrides < flags given on the command line.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional, Sequence

from tcjepa.config import ConfigError, _read_yaml, parse_override

RESERVED = ("help", "config", "overrides", "func", "command")
_FLAG_ACTIONS = (argparse._StoreTrueAction, argparse._StoreFalseAction)


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("config")
    g.add_argument("--config", metavar="YAML",
                   help="protocol settings from a YAML file (configs/eval/); flags given here override it")
    g.add_argument("overrides", nargs="*", metavar="key=value",
                   help="override entries of --config, e.g. epochs=20 lrs=[0.01,0.1]")


def settable_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest not in RESERVED and a.option_strings}


def coerce(action: argparse.Action, value: Any, where: str) -> Any:
    """A YAML value checked and converted the way argparse would treat it on the command line."""
    if isinstance(action, _FLAG_ACTIONS):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    many = action.nargs in ("+", "*") or isinstance(action.nargs, int)
    if many and not isinstance(value, list):
        value = [value]
    if not many and isinstance(value, (list, dict)):
        raise ConfigError(f"{where}: expected one value, got {value!r}")
    items = value if many else [value]
    converted = []
    for item in items:
        if item is None or isinstance(item, (dict, list)):
            raise ConfigError(f"{where}: invalid value {item!r}")
        try:
            item = action.type(str(item)) if action.type else str(item)
        except (argparse.ArgumentTypeError, TypeError, ValueError) as e:
            raise ConfigError(f"{where}: {item!r} is not valid ({e})") from None
        if action.choices is not None and item not in action.choices:
            raise ConfigError(f"{where}: {item!r} is not one of {list(action.choices)}")
        converted.append(item)
    return converted if many else converted[0]


def config_values(parser: argparse.ArgumentParser, command: str, path: Optional[str],
                  overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The file's settings with the overrides applied, as argparse destinations -> values."""
    data: dict[str, Any] = _read_yaml(Path(path)) if path else {}
    source = str(path) if path else "overrides"
    written_for = data.pop("command", None)
    if written_for not in (None, command):
        raise ConfigError(f"{source}: written for `tcjepa-eval {written_for}`, not `tcjepa-eval {command}`")
    entries = [(f"{source}: {k}", k, v) for k, v in data.items()]
    for text in overrides:
        parts, value = parse_override(text)
        if len(parts) != 1:
            raise ConfigError(f"override {text!r}: evaluation configs are flat, write e.g. epochs=20")
        entries.append((f"override {text!r}", parts[0], value))
    actions = settable_actions(parser)
    values = {}
    for where, key, value in entries:
        dest = str(key).replace("-", "_")
        if dest not in actions:
            raise ConfigError(f"{where}: unknown key {key!r}; valid keys: {sorted(actions)}")
        values[dest] = coerce(actions[dest], value, where)
    return values


def apply_config(parser: argparse.ArgumentParser, subparser: argparse.ArgumentParser, argv: Sequence[str],
                 args: argparse.Namespace) -> argparse.Namespace:
    """Re-parse ``argv`` with the config's values as the subcommand's defaults."""
    if not getattr(args, "config", None) and not getattr(args, "overrides", None):
        return args
    values = config_values(subparser, args.command, args.config, args.overrides)
    subparser.set_defaults(**values)
    args = parser.parse_args(argv)
    args.config_values = values  # recorded with the result
    return args
