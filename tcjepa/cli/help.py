"""``--help`` shows every option's default: the one place that promise is kept."""
from __future__ import annotations

import argparse

_NO_VALUE_ACTIONS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction,
                     argparse._CountAction, argparse._HelpAction, argparse._VersionAction)


def shown_default(action: argparse.Action) -> bool:
    """Whether an option's help must name its default: it takes a value, is optional and has one."""
    return not (isinstance(action, _NO_VALUE_ACTIONS) or isinstance(action, argparse._SubParsersAction)
                or action.required or not action.option_strings
                or action.default is None or action.default is argparse.SUPPRESS)


def document_defaults(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Append ``(default: X)`` to each option's help that does not already say its default,
    in ``parser`` and all its subcommands; returns ``parser``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                document_defaults(sub)
        elif shown_default(action) and action.help and "default" not in action.help:
            value = " ".join(map(str, action.default)) if isinstance(action.default, (list, tuple)) else action.default
            action.help = f"{action.help} (default: {str(value).replace('%', '%%')})"
    return parser
