"""`run` (also `recipe`): the numbered dataset recipe (oneposetrans.recipe)."""

from __future__ import annotations

import argparse
from pathlib import Path

from oneposetrans.commands import FINETUNE, GENERATION, SMOKE_BANNER, SMOKE_FINETUNE_RESOLUTION, SMOKE_RESOLUTION, add_common, echo, models_dir, open_session, smoke_resolution
from oneposetrans.datasets import DATASETS


def add(commands) -> None:
    run = commands.add_parser(
        "run",
        aliases=["recipe"],
        help="the whole numbered dataset recipe (steps 1-11), each step resuming",
        description=(
            "Steps: 1 segment sources, 2 captions, 3 fine-tune, 4 inpaint backgrounds, 5 repose, 6 RGBA of the "
            "results, 7 person on black + mask, 8 paste, 9 refine, 10 person on black + mask of the refined "
            "results, 11 paste them. RESULTS/images must hold the images as <name>.png (prepare-deepfashion "
            "writes them for DeepFashion). Works under `accelerate launch`."
        ),
    )
    run.add_argument("--dataset", choices=DATASETS, required=True, help="dataset adapter")
    run.add_argument("--pairs", type=Path, required=True, help="pairs list")
    run.add_argument("--keypoints", type=Path, help="DeepFashion annotation CSV (for step 5)")
    run.add_argument("--captions", type=Path, help="captions file 'index/name/text' (step 2 imports it; default: caption automatically)")
    run.add_argument("--steps", default="1-11", help="steps to run, e.g. 1-11, 5, 1-4,9")
    run.add_argument("--resolution", type=int, help=f"generation and refining shorter side (default {GENERATION.resolution}; {SMOKE_RESOLUTION} with --smoke)")
    run.add_argument("--finetune-resolution", type=int, help=f"LoRA crop size (default {FINETUNE.resolution}; {SMOKE_FINETUNE_RESOLUTION} with --smoke)")
    run.add_argument("--inpainter", choices=("lama", "diffusion"), default="lama", help="background inpainter (step 4)")
    run.add_argument("--denoise-steps", type=int, help=f"override the denoising steps of steps 5 and 9 (published: {GENERATION.steps}), for quick checks")
    run.add_argument("--finetune-steps", type=int, help=f"override the LoRA optimisation steps (published: {FINETUNE.steps}), for quick checks")
    add_common(run)
    run.set_defaults(handler=handle)


def handle(arguments: argparse.Namespace) -> int:
    from oneposetrans.recipe import RecipeRequest, parse_steps, run_recipe

    if arguments.smoke:
        print(SMOKE_BANNER, flush=True)
    steps = parse_steps(arguments.steps)
    models = models_dir(arguments)
    request = RecipeRequest(
        dataset=arguments.dataset,
        results=arguments.results,
        pairs=arguments.pairs,
        keypoints=arguments.keypoints,
        captions=arguments.captions,
        steps=steps,
        resolution=smoke_resolution(arguments),
        finetune_resolution=arguments.finetune_resolution or (SMOKE_FINETUNE_RESOLUTION if arguments.smoke else FINETUNE.resolution),
        denoise_steps=arguments.denoise_steps,
        finetune_steps=arguments.finetune_steps,
    )
    session = open_session(arguments, models, inpainter=arguments.inpainter)
    for step, outcome in run_recipe(request, session, echo=echo, progress=not arguments.quiet):
        print(f"  step {step:>2}: {outcome}")
    return 0
