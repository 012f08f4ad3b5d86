"""The commands of ``python -m oneposetrans``, one module each (as the diffusers and transformers
CLIs do), and what they share: the common flags, the models folder (the tiny kit with
``--smoke``), the session and the smoke-run sizes. :mod:`oneposetrans.cli` is their table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from oneposetrans import registry
from oneposetrans.profiles import PROFILES
from oneposetrans.settings import FinetuneSettings, GenerationSettings

GENERATION = GenerationSettings()
FINETUNE = FinetuneSettings()

SMOKE_RESOLUTION = 256
SMOKE_FINETUNE_RESOLUTION = 128
SMOKE_BANNER = (
    "SMOKE RUN: tiny models with random weights. The images are noise; this run proves the "
    "plumbing (files, stages, resume), not picture quality."
)


def add_common(parser: argparse.ArgumentParser, results: bool = True) -> None:
    if results:
        parser.add_argument("--results", type=Path, default=Path("results"), help="results tree root (default: ./results)")
    parser.add_argument(
        "--models",
        type=Path,
        default=Path(registry.DEFAULT_MODELS_DIR),
        help="models folder (default: ./models or $ONEPOSETRANS_MODELS)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="use the tiny-model kit (built once in a cache folder) as --models"
    )
    parser.add_argument(
        "--profile",
        choices=tuple(PROFILES),
        default="default",
        help="'reference' reproduces the published code's behaviour, quirks included; 'default' fixes them",
    )
    parser.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:1 ... (default: auto)")
    parser.add_argument(
        "--dtype", choices=("auto", "fp16", "bf16", "fp32"), default="auto", help="weights precision (auto: fp16 on GPU, fp32 on CPU)"
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bars or progress lines (results, failures and the summary still print)"
    )


def add_compile(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the UNet's and ControlNet's transformer and ResNet blocks (default profile; the first target of each "
        "size and batch pays the compilation, every identity after it reuses it; worth it from a few targets on a GPU)",
    )


def models_dir(arguments: argparse.Namespace, tiny_work: bool = True) -> Path:
    """The models folder; with ``--smoke``, the tiny kit. ``tiny_work``: the command's compute is
    the kit's tiny models (not evaluation's full-size metric backbones)."""
    if getattr(arguments, "smoke", False):
        import torch

        from oneposetrans.testing import cached_tiny_models

        if tiny_work:
            # Tiny tensors gain nothing from intra-op threads, and beside another job the
            # spinning threads more than double a smoke run (2 cores: 109 s against 47 s).
            torch.set_num_threads(1)

        return cached_tiny_models(progress=not getattr(arguments, "quiet", False))
    return arguments.models


def smoke_resolution(arguments: argparse.Namespace) -> int:
    return arguments.resolution or (SMOKE_RESOLUTION if arguments.smoke else GENERATION.resolution)


def echo(line: str) -> None:
    print(line, flush=True)


def open_session(arguments: argparse.Namespace, models: Path | None, **options):
    """The one session of this command: its models folder, resolved device and profile."""
    from oneposetrans.session import Session

    return Session(models, arguments.device, arguments.dtype, arguments.profile, echo=echo, **options)
