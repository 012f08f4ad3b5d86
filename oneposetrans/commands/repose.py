"""`repose`: one photo and target poses through every step (oneposetrans.repose)."""

from __future__ import annotations

import argparse
from pathlib import Path

from oneposetrans.commands import (
    GENERATION,
    SMOKE_BANNER,
    SMOKE_FINETUNE_RESOLUTION,
    SMOKE_RESOLUTION,
    add_common,
    add_compile,
    echo,
    models_dir,
    open_session,
    smoke_resolution,
)
from oneposetrans.errors import OnePoseTransError
from oneposetrans.settings import FinetuneSettings, GenerationSettings


def add(commands) -> None:
    repose = commands.add_parser(
        "repose",
        help="one photo + target poses -> the same person in those poses (the whole chain)",
        description="Run one photo through every built stage into a results tree, with a contact sheet.",
    )
    repose.add_argument("--source", type=Path, help="photo of the person (default: a bundled photo)")
    repose.add_argument(
        "--pose", type=Path, nargs="+", default=[], help="target poses: OpenPose keypoints JSON, rendered pose maps, or photos of a person (the pose is detected; needs the openpose model) (default: bundled poses)"
    )
    repose.add_argument("--out", type=Path, required=True, help="results tree to write (resumed if it exists)")
    repose.add_argument("--caption", help='"A man/woman with face, <clothes and accessories>"')
    repose.add_argument("--refine", action="store_true", help="also run the img2img refining stage")
    repose.add_argument("--steps", "--denoise-steps", dest="steps", type=int, default=GENERATION.steps, help="denoising steps")
    repose.add_argument(
        "--finetune-steps", type=int, default=FinetuneSettings.steps, help="LoRA optimisation steps (fewer only for quick checks)"
    )
    repose.add_argument("--guidance", type=float, default=GENERATION.guidance, help="classifier-free guidance scale")
    repose.add_argument("--seed", type=int, default=GENERATION.seed, help="sampling seed (the same for every target)")
    repose.add_argument(
        "--resolution", type=int, help=f"shorter side of the output, rounded to 64 (default {GENERATION.resolution}; {SMOKE_RESOLUTION} with --smoke)"
    )
    repose.add_argument("--controlnet-scale", type=float, default=GENERATION.controlnet_scale, help="OpenPose ControlNet conditioning scale")
    repose.add_argument("--batch-size", type=int, default=GENERATION.batch_size, help="target poses sampled together in one batch")
    repose.add_argument("--no-image-prompt", action="store_true", help="leave out the IP-Adapter image prompt")
    repose.add_argument("--no-face", action="store_true", help="leave out the InstantID face embedding")
    repose.add_argument("--opaque", action="store_true", help="decode RGB with the SDXL VAE instead of LayerDiffuse RGBA")
    repose.add_argument(
        "--identitynet",
        action="store_true",
        help="add InstantID's IdentityNet on the source's face landmarks as a second ControlNet (not part of the method)",
    )
    repose.add_argument("--identitynet-scale", type=float, default=GENERATION.identitynet_scale, help="IdentityNet conditioning scale")
    repose.add_argument(
        "--no-composite",
        action="store_true",
        help="stop at the RGBA results: no segmentation, background inpainting or paste (needs no GroundingDINO, SAM or LaMa)",
    )
    repose.add_argument("--inpainter", choices=("lama", "diffusion"), default="lama", help="background inpainter")
    add_compile(repose)
    add_common(repose, results=False)
    repose.set_defaults(handler=handle)


def handle(arguments: argparse.Namespace) -> int:
    from oneposetrans.repose import ReposeRequest, check_inputs, format_report, require_models, run_repose

    resolution = smoke_resolution(arguments)
    request = ReposeRequest(
        out=arguments.out,
        source=arguments.source,
        poses=arguments.pose,
        caption=arguments.caption,
        refine=arguments.refine,
        settings=GenerationSettings(
            steps=arguments.steps,
            guidance=arguments.guidance,
            seed=arguments.seed,
            resolution=resolution,
            controlnet_scale=arguments.controlnet_scale,
            batch_size=arguments.batch_size,
            use_image_prompt=not arguments.no_image_prompt,
            use_face=not arguments.no_face,
            transparent=not arguments.opaque,
            identitynet_scale=arguments.identitynet_scale,
        ),
        finetune=FinetuneSettings(
            resolution=SMOKE_FINETUNE_RESOLUTION if arguments.smoke else FinetuneSettings.resolution,
            steps=arguments.finetune_steps,
        ),
        identitynet=arguments.identitynet,
        composite=not arguments.no_composite,
        inpainter=arguments.inpainter,
    )
    # Bad inputs fail here, in about a second, before the banner, the kit build and any model load.
    checked = check_inputs(request)
    session = open_session(
        arguments, models_dir(arguments), identitynet=arguments.identitynet, inpainter=arguments.inpainter, compile=arguments.compile
    )
    # Every model the run's stages need, named at once, before anything is written.
    require_models(request, session, checked)
    if arguments.smoke:
        print(SMOKE_BANNER, flush=True)
    try:
        report = run_repose(request, session, echo=echo, checked=checked)
    except OnePoseTransError as error:
        # A failed run still shows what each stage did before it stopped.
        if getattr(error, "report", None):
            print(format_report(error.report))
        raise
    reminder = " (smoke run: the pictures are noise)" if arguments.smoke else ""
    print(f"results in {arguments.out.resolve()}{reminder}\n" + format_report(report))
    return 0
