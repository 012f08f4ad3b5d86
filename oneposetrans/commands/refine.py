"""`refine`: the img2img refining step over the reposed results."""

from __future__ import annotations

import argparse
from pathlib import Path

from oneposetrans.commands import GENERATION, SMOKE_BANNER, SMOKE_RESOLUTION, add_common, echo, models_dir, open_session, smoke_resolution
from oneposetrans.datasets import DATASETS
from oneposetrans.results import ResultsTree
from oneposetrans.settings import RefineSettings


def add(commands) -> None:
    refine = commands.add_parser(
        "refine",
        help="the refining stage: LayerDiffuse img2img of reposed results (refining_stage_*.py)",
        description=(
            "DPM++ 2M Karras img2img at strength 0.65 (25 steps), CFG 7, seed 12345, the source as IP-Adapter "
            "image prompt and its LoRA at up_blocks.0.attentions.1, from RESULTS/reposed_result (reference profile: "
            "reposed_rgba) into RESULTS/refined_result. Resumable and sharded like generate."
        ),
    )
    refine.add_argument("--dataset", choices=DATASETS, help="dataset (only names the run; both read the results tree)")
    refine.add_argument("--captions", type=Path, help="captions file 'index/name/text' (default: RESULTS/captions)")
    refine.add_argument("--resolution", type=int, help=f"shorter side (default {GENERATION.resolution}; {SMOKE_RESOLUTION} with --smoke)")
    refine.add_argument("--overwrite", action="store_true", help="refine again results that exist")
    add_common(refine)
    refine.set_defaults(handler=handle)


def handle(arguments: argparse.Namespace) -> int:
    from oneposetrans.generate import source_captions
    from oneposetrans.recipe import Recipe

    if arguments.smoke:
        print(SMOKE_BANNER, flush=True)
    # Inputs and models are checked before the results tree is touched.
    planned = ResultsTree(arguments.results, create=False)
    session = open_session(arguments, models_dir(arguments))
    settings = RefineSettings(resolution=smoke_resolution(arguments))
    captions = source_captions(planned, arguments.captions, session.profile)
    check = Recipe(planned, session, refine=settings)
    check.require([check.refine_stage(captions)])
    recipe = Recipe(ResultsTree(arguments.results), session, refine=settings, echo=echo, progress=not arguments.quiet, overwrite=arguments.overwrite)
    recipe.refine(captions)
    return 0
