"""`generate`: the reposing step over a dataset's pairs (oneposetrans.generate)."""

from __future__ import annotations

import argparse
from pathlib import Path

from oneposetrans.commands import (
    GENERATION,
    SMOKE_BANNER,
    SMOKE_RESOLUTION,
    add_common,
    add_compile,
    echo,
    models_dir,
    open_session,
    smoke_resolution,
)
from oneposetrans.datasets import DATASETS
from oneposetrans.results import ResultsTree
from oneposetrans.settings import GenerationSettings


def add(commands) -> None:
    generate = commands.add_parser(
        "generate",
        help="reposing run over a dataset's pairs (oneposetrans_deepfashion.py, oneposetrans_wpose.py)",
        description=(
            "Renders every pair of --pairs into RESULTS/reposed_result/<source>_to_<target>.png (RGBA), sources "
            "grouped so that each one's LoRA, caption, image prompt and face are prepared once. Resumable; "
            "under `accelerate launch` the sources are shared among the processes. Needs RESULTS/images/<name>.png, "
            "RESULTS/lora/<source>.safetensors and captions; DeepFashion poses come from --keypoints, WPose poses "
            "from OpenPose on the target photo."
        ),
    )
    generate.add_argument("--dataset", choices=DATASETS, required=True, help="dataset adapter")
    generate.add_argument("--pairs", type=Path, required=True, help="pairs list (DeepFashion CSV or subset file, WPose pairs)")
    generate.add_argument("--keypoints", type=Path, help="DeepFashion annotation CSV (fasion-resize-annotation-test.csv)")
    generate.add_argument("--captions", type=Path, help="captions file 'index/name/text' (default: RESULTS/captions)")
    generate.add_argument("--steps", "--denoise-steps", dest="steps", type=int, default=GENERATION.steps, help="denoising steps")
    generate.add_argument("--guidance", type=float, default=GENERATION.guidance, help="classifier-free guidance scale")
    generate.add_argument("--seed", type=int, default=GENERATION.seed, help="sampling seed, the same for every pair")
    generate.add_argument("--resolution", type=int, help=f"shorter side of the output (default {GENERATION.resolution}; {SMOKE_RESOLUTION} with --smoke)")
    generate.add_argument("--batch-size", type=int, default=GENERATION.batch_size, help="target poses of one source sampled together")
    add_compile(generate)
    add_common(generate)
    generate.set_defaults(handler=handle)


def handle(arguments: argparse.Namespace) -> int:
    from oneposetrans.generate import load_inputs
    from oneposetrans.recipe import Recipe

    if arguments.smoke:
        print(SMOKE_BANNER, flush=True)
    session = open_session(arguments, models_dir(arguments), compile=arguments.compile)
    # Inputs and models are checked before the results tree is touched.
    planned = ResultsTree(arguments.results, create=False)
    inputs = load_inputs(arguments.dataset, arguments.pairs, planned, arguments.captions, arguments.keypoints, session.profile)
    settings = GenerationSettings(
        steps=arguments.steps,
        guidance=arguments.guidance,
        seed=arguments.seed,
        resolution=smoke_resolution(arguments),
        batch_size=arguments.batch_size,
    )
    check = Recipe(planned, session, generation=settings)
    check.require([check.dataset_stage(inputs)])
    recipe = Recipe(ResultsTree(arguments.results), session, generation=settings, echo=echo, progress=not arguments.quiet)
    recipe.generate_pairs(inputs)
    return 0
