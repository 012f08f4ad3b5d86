"""``python -m oneposetrans <command>``: one entry point for every stage.

Each command is a module of :mod:`oneposetrans.commands` (its flags and its handler); this module
is their table, in the order ``--help`` lists them, and the entry point.

Exit codes: 0 success; 1 some cases failed (each reason is in ``<results>/logs``) or bad
input; 2 usage error or an environment problem; 3 a required model is missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from oneposetrans import progress
from oneposetrans.commands import caption, demo, evaluate, finetune, generate, imagpose, models, prepare, refine, repose, run, tools
from oneposetrans.errors import EnvironmentProblem, OnePoseTransError
from oneposetrans.runtime import check_device_available

COMMANDS = (repose, models, finetune, caption, prepare, tools, generate, refine, run, evaluate, imagpose, demo)


class _HelpFormatter(argparse.HelpFormatter):
    """Shows each flag's default, unless its help states it or there is none worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or not action.option_strings or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def _use_formatter(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = _HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _use_formatter(child)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oneposetrans",
        description="One-shot pose-guided person image synthesis (OnePoseTrans, arXiv 2409.09593).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add(commands)
    _use_formatter(parser)
    return parser


def run_script(script: str, preset: list[str]) -> int:
    """A root script of the original project: the command ``preset`` under the script's own name,
    so that its ``--help`` and errors say ``lora_wpose.py``, not ``oneposetrans finetune``."""
    parser = build_parser()
    name = Path(script).name
    command = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[preset[0]]
    command.prog = name
    # The flags the script supplies are neither required of the user nor listed as theirs.
    for action in command._actions:
        if set(action.option_strings) & set(preset[1:]):
            action.required, action.help = False, argparse.SUPPRESS
    command.description = (
        f"{name} is `python -m oneposetrans {' '.join(preset)}`. It runs the default profile (this project's fixes); "
        "--profile reference runs the published computation. " + (command.description or "")
    )
    return main([*preset, *sys.argv[1:]], parser)


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    arguments = (parser or build_parser()).parse_args(argv)
    progress.set_enabled(not getattr(arguments, "quiet", False))
    try:
        if str(getattr(arguments, "device", "")).startswith("cuda"):
            check_device_available(arguments.device)
        return arguments.handler(arguments)
    except OnePoseTransError as error:
        print(f"oneposetrans: error: {error}", file=sys.stderr)
        return error.exit_code
    except OSError as error:
        # The environment refused a write or a read (no permission, a file where a folder must
        # be, a full disk): one line naming the path, not a traceback.
        where = f"{error.filename}: " if error.filename else ""
        print(f"oneposetrans: error: {where}{error.strerror or error}", file=sys.stderr)
        return EnvironmentProblem.exit_code
    except KeyboardInterrupt:
        print("oneposetrans: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
