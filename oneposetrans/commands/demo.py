"""`demo`: the Gradio demo (oneposetrans.demo)."""

from __future__ import annotations

import argparse
from pathlib import Path

from oneposetrans.commands import GENERATION, FINETUNE, SMOKE_BANNER, SMOKE_FINETUNE_RESOLUTION, SMOKE_RESOLUTION, add_common, add_compile, models_dir


def add(commands) -> None:
    demo = commands.add_parser(
        "demo",
        help="the Gradio demo: the whole in-the-wild flow in the browser (demo.py)",
        description="Serves on 127.0.0.1 unless --host is given; no public share link unless --share.",
    )
    demo.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes it to the network)")
    demo.add_argument("--port", type=int, default=7860, help="port")
    demo.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    demo.add_argument("--workdir", type=Path, help="where visitors' folders go, kept after the demo stops (default: a temporary folder, removed when it stops)")
    add_compile(demo)
    add_common(demo, results=False)
    demo.set_defaults(handler=handle)


def handle(arguments: argparse.Namespace) -> int:
    from oneposetrans.demo import DemoConfig, launch

    if arguments.compile:  # refused now rather than at the first visitor's generation
        from oneposetrans.generate import check_compilable
        from oneposetrans.profiles import profile_named

        check_compilable(profile_named(arguments.profile))
    if arguments.smoke:
        print(SMOKE_BANNER, flush=True)
    config = DemoConfig(
        models=models_dir(arguments),
        workdir=arguments.workdir,
        device=arguments.device,
        dtype=arguments.dtype,
        profile=arguments.profile,
        resolution=SMOKE_RESOLUTION if arguments.smoke else GENERATION.resolution,
        finetune_resolution=SMOKE_FINETUNE_RESOLUTION if arguments.smoke else FINETUNE.resolution,
        # The smoke demo must answer within a browser test's patience on a CPU.
        finetune_steps=10 if arguments.smoke else FINETUNE.steps,
        denoise_steps=4 if arguments.smoke else GENERATION.steps,
        smoke=arguments.smoke,
        compile=arguments.compile,
    )
    launch(config, arguments.host, arguments.port, arguments.share)
    return 0
