"""`models`: check, download, fake (tiny kit) and list the model folders."""

from __future__ import annotations

import argparse
from pathlib import Path

import os
import subprocess
import sys

from oneposetrans import registry


def add(commands) -> None:
    models = commands.add_parser("models", help="check, download or fake the model folders")
    actions = models.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="list every model as present or missing; exit 3 if a needed one is missing")
    check.add_argument("--models", type=Path, default=Path(registry.DEFAULT_MODELS_DIR), help="models folder")
    _add_for(check, "only the models of")
    # The flag's earlier name, kept working.
    check.add_argument("--stage", dest="targets", action="append", choices=registry.TARGETS, help=argparse.SUPPRESS)
    check.set_defaults(handler=_check)
    download = actions.add_parser(
        "download",
        help="fetch models where a network exists: a size table first, then each missing model (resumable)",
    )
    download.add_argument("names", nargs="*", help="model names (default: the models that --for names)")
    _add_for(
        download,
        f"the models of (default: repose, about {sum(registry.spec(n).size_gb for n in registry.task_models('repose')):.0f} GB)",
    )
    download.add_argument("--dry-run", action="store_true", help="print the size table and stop (needs no network)")
    download.add_argument("--models", type=Path, default=Path(registry.DEFAULT_MODELS_DIR), help="models folder")
    download.set_defaults(handler=_download)
    tiny = actions.add_parser("make-tiny", help="write the tiny-model kit (random weights, real formats) into DIR")
    tiny.add_argument("dir", type=Path, help="folder to write")
    tiny.set_defaults(handler=_make_tiny)
    table = actions.add_parser("table", help="print the models table of the README")
    table.set_defaults(handler=lambda arguments: print(registry.markdown_table()) or 0)


def _add_for(parser: argparse.ArgumentParser, what: str) -> None:
    """One flag, one meaning, in `models check` and `models download`."""
    parser.add_argument(
        "--for", dest="targets", action="append", choices=registry.TARGETS, metavar="COMMAND_OR_STAGE",
        help=f"{what} a command with its default flags, or of one stage (repeatable): {', '.join(registry.TARGETS)}",
    )


def _check(arguments: argparse.Namespace) -> int:
    text, complete = registry.check(arguments.models, registry.stages_of(arguments.targets))
    print(text)
    if not complete:
        print(f"\nsome required models are missing in {arguments.models}", file=sys.stderr)
    return 0 if complete else 3


def _download(arguments: argparse.Namespace) -> int:
    names = registry.selected(arguments.names, arguments.targets)
    if arguments.dry_run:
        return registry.download(names, arguments.models, dry_run=True)
    # Downloads are allowed only in this child process; everything else stays offline.
    environment = {**os.environ, "ONEPOSETRANS_ALLOW_DOWNLOADS": "1", "HF_HUB_OFFLINE": "0"}
    command = [sys.executable, "-m", "oneposetrans.registry", *names, "--models", str(arguments.models)]
    return subprocess.call(command, env=environment)


def _make_tiny(arguments: argparse.Namespace) -> int:
    from oneposetrans.testing import make_tiny_models

    make_tiny_models(arguments.dir, progress=True)  # a line per model: the build takes seconds
    print(f"tiny-model kit (random weights) written to {arguments.dir}")
    return 0
