"""``python -m oneposetrans <command>``: one entry point for every stage.

Exit codes: 0 success; 1 some cases failed (each reason is in ``<results>/logs``) or bad
input; 2 usage error; 3 a required model is missing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from oneposetrans import registry
from oneposetrans.errors import BadInputError, EnvironmentProblem, OnePoseTransError
from oneposetrans.results import PROFILES
from oneposetrans.settings import FinetuneSettings, GenerationSettings, RefineSettings

GENERATION = GenerationSettings()
FINETUNE = FinetuneSettings()

SMOKE_RESOLUTION = 256
SMOKE_FINETUNE_RESOLUTION = 128
SMOKE_BANNER = (
    "SMOKE RUN: tiny models with random weights. The images are noise; this run proves the "
    "plumbing (files, stages, resume), not picture quality."
)


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


def _add_common(parser: argparse.ArgumentParser, results: bool = True) -> None:
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
        choices=PROFILES,
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oneposetrans",
        description="One-shot pose-guided person image synthesis (OnePoseTrans, arXiv 2409.09593).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    _add_common(repose, results=False)
    repose.set_defaults(handler=_cmd_repose)

    models = commands.add_parser("models", help="check, download or fake the model folders")
    actions = models.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="list every model as present or missing; exit 3 if a needed one is missing")
    check.add_argument("--models", type=Path, default=Path(registry.DEFAULT_MODELS_DIR), help="models folder")
    check.add_argument("--stage", action="append", help="only the models this stage needs (repeatable)")
    check.set_defaults(handler=_cmd_models_check)
    download = actions.add_parser(
        "download",
        help="fetch models where a network exists: a size table first, then each missing model (resumable)",
    )
    download.add_argument("names", nargs="*", help="model names (default: the models that --for names)")
    download.add_argument(
        "--for",
        dest="task",
        choices=tuple(registry.TASKS),
        help="the models a command needs with its default flags (default: repose, about "
        f"{sum(registry.spec(n).size_gb for n in registry.TASKS['repose']):.0f} GB)",
    )
    download.add_argument("--dry-run", action="store_true", help="print the size table and stop (needs no network)")
    download.add_argument("--models", type=Path, default=Path(registry.DEFAULT_MODELS_DIR), help="models folder")
    download.set_defaults(handler=_cmd_models_download)
    tiny = actions.add_parser("make-tiny", help="write the tiny-model kit (random weights, real formats) into DIR")
    tiny.add_argument("dir", type=Path, help="folder to write")
    tiny.set_defaults(handler=_cmd_models_make_tiny)
    table = actions.add_parser("table", help="print the models table of the README")
    table.set_defaults(handler=lambda arguments: print(registry.markdown_table()) or 0)

    _add_finetune(commands)

    caption = commands.add_parser(
        "caption",
        help="captions 'A man/woman with face, ...' by Gemini or a local VLM, or imported from a file",
        description=(
            "Caption every image of --images not yet captioned (resumable), with Gemini through google-genai "
            "(the API key is read from GEMINI_API_KEY or GOOGLE_API_KEY and never written anywhere) or, offline, "
            "with a local transformers vision-language model (--local-vlm). Captions that do not fit the "
            "template are repaired or flagged, never used silently."
        ),
    )
    caption.add_argument("--images", type=Path, help="folder of images (default: RESULTS/images)")
    caption.add_argument("--model", default="gemini-1.5-pro", help="Gemini model name")
    caption.add_argument(
        "--local-vlm",
        nargs="?",
        const=True,
        metavar="DIR",
        help="caption offline with a transformers image-text-to-text model folder "
        "(default DIR: MODELS/SmolVLM-256M-Instruct, the registry's caption-vlm)",
    )
    caption.add_argument("--import", dest="import_file", type=Path, help="take captions from an 'index/name/text' file instead")
    caption.add_argument("--export", type=Path, help="also write all captions in the original 'index/name/text' format")
    caption.add_argument("--overwrite", action="store_true", help="caption again images that have a caption")
    _add_common(caption)
    caption.set_defaults(handler=_cmd_caption)

    prepare = commands.add_parser(
        "prepare-deepfashion",
        help="DeepFashion train/test split with the published file renaming (generate_fashion_datasets.py)",
        description="Run from the folder that holds ./fashion (MEN/, WOMEN/, train.lst, test.lst).",
    )
    prepare.add_argument("--root", type=Path, default=Path("."), help="folder that holds ./fashion")
    prepare.add_argument("--results", type=Path, help="also write the test images as PNG into RESULTS/images")
    prepare.set_defaults(
        handler=lambda arguments: _prepare_deepfashion(arguments.root, arguments.results)
    )


    _add_tools(commands)
    _add_dataset_stages(commands)

    from oneposetrans.imagpose.commands import add_commands as add_imagpose

    add_imagpose(commands, _add_common)

    demo = commands.add_parser(
        "demo",
        help="the Gradio demo: the whole in-the-wild flow in the browser (demo.py)",
        description="Serves on 127.0.0.1 unless --host is given; no public share link unless --share.",
    )
    demo.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes it to the network)")
    demo.add_argument("--port", type=int, default=7860, help="port")
    demo.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    demo.add_argument("--workdir", type=Path, help="where visitors' folders go (default: a temp folder)")
    _add_common(demo, results=False)
    demo.set_defaults(handler=_cmd_demo)
    _use_formatter(parser)
    return parser


TOOL_PATHS = ("source_path", "mask_path", "rgba_path", "rgb_path", "background_path", "result_path")
TOOL_MODES = ("dataset", "rgba", "rgb", "paste", "inpainting_lama", "inpainting_diffusion")

# Where each mode reads and writes inside a results tree when a path flag is left out
# (the README's recipe, steps 1, 4, 6, 7 and 8).
TOOL_DEFAULTS = {
    "dataset": {"source_path": "images", "rgba_path": "images_rgba", "mask_path": "images_mask"},
    "rgba": {"source_path": "reposed_result", "rgba_path": "reposed_rgba"},
    "rgb": {"source_path": "reposed_result", "rgb_path": "reposed_rgb", "mask_path": "reposed_mask"},
    "inpaint": {"source_path": "images", "mask_path": "images_mask", "background_path": "images_inpainted"},
    "paste": {
        "rgb_path": "reposed_result",
        "mask_path": "reposed_mask",
        "background_path": "images_inpainted",
        "result_path": "reposed_final_result",
    },
}


def _add_tool_flags(parser: argparse.ArgumentParser, flags: tuple[str, ...]) -> None:
    for flag in flags:
        parser.add_argument(f"--{flag}", type=Path, help=f"{flag.replace('_path', '').replace('_', ' ')} folder (default: in the results tree)")
    parser.add_argument("--overwrite", action="store_true", help="redo images whose outputs exist")
    _add_common(parser)


def _add_tools(commands) -> None:
    from oneposetrans.inpaint import INPAINTERS
    from oneposetrans.segment import SEGMENT_MODES

    segment = commands.add_parser(
        "segment",
        help="person masks with GroundingDINO + SAM (tool_utils modes dataset, rgba, rgb)",
        description=(
            "dataset: RGBA (original pixels, person mask as alpha) + the dilated inpainting mask; "
            "rgba: RGBA only; rgb: person on black + the undilated mask. Images without a person "
            "fail with one line in RESULTS/logs/segment.jsonl; the others go on."
        ),
    )
    segment.add_argument("--mode", choices=SEGMENT_MODES, default="dataset", help="what to write")
    _add_tool_flags(segment, ("source_path", "mask_path", "rgba_path", "rgb_path"))
    segment.set_defaults(handler=lambda arguments: _cmd_tool(arguments, arguments.mode))

    inpaint = commands.add_parser(
        "inpaint",
        help="remove the person from each source photo (LaMa ONNX or SDXL inpainting)",
        description="Inpaints SOURCE/<name> under MASK/<name>.png into BACKGROUND/<name>.png.",
    )
    inpaint.add_argument("--inpainter", choices=INPAINTERS, default="lama", help="lama (ONNX) or diffusion (SDXL inpainting)")
    _add_tool_flags(inpaint, ("source_path", "mask_path", "background_path"))
    inpaint.set_defaults(handler=lambda arguments: _cmd_tool(arguments, "inpaint"))

    paste = commands.add_parser(
        "paste",
        help="composite each reposed person onto its source's inpainted background",
        description=(
            "Pastes RGB/<src>_to_<tgt>.png onto BACKGROUND/<src>.png into RESULT/. The default profile uses "
            "the LayerDiffuse alpha when the file has one (the mask otherwise) with a feathered edge and fits "
            "the background to the result's frame; the reference profile is the published hard-mask paste."
        ),
    )
    _add_tool_flags(paste, ("rgb_path", "mask_path", "background_path", "result_path"))
    paste.set_defaults(handler=lambda arguments: _cmd_tool(arguments, "paste"))

    tool_utils = commands.add_parser(
        "tool-utils", help="the original tool_utils.py interface: --mode dataset|rgba|rgb|paste|inpainting_lama|inpainting_diffusion"
    )
    tool_utils.add_argument("--mode", required=True, choices=TOOL_MODES, help="what to do, as in the original tool_utils.py")
    _add_tool_flags(tool_utils, TOOL_PATHS)
    tool_utils.set_defaults(handler=_cmd_tool_utils)


def _add_dataset_stages(commands) -> None:
    from oneposetrans.settings import ALL_METRICS
    from oneposetrans.generate import DATASETS

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
    _add_common(generate)
    generate.set_defaults(handler=_cmd_generate)

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
    _add_common(refine)
    refine.set_defaults(handler=_cmd_refine)

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
    _add_common(run)
    run.set_defaults(handler=_cmd_run)

    evaluate = commands.add_parser(
        "evaluate",
        help="SSIM (both community variants), PSNR, LPIPS, FID (community and standard), masked metrics, face identity",
        description=(
            "Scores RESULTS/<folder>/<source>_to_<target>.png against GROUND_TRUTH/<target>.(png|jpg) at the "
            "field's evaluation size. Writes RESULTS/evaluation/metrics.json (summary and per pair), metrics.md "
            "(a table for a paper or README) and report.html (histograms, best and worst cases). Backbones come "
            "from the models folder: lpips-alex, fid-inception, fid-inception-tf, antelopev2."
        ),
    )
    evaluate.add_argument("--ground-truth", type=Path, required=True, help="folder of the target images")
    evaluate.add_argument("--folder", default="reposed_final_result", help="results folder to score (e.g. refined_final_result)")
    evaluate.add_argument(
        "--size",
        default="256x176",
        help="evaluation size HEIGHTxWIDTH (the field's DeepFashion sizes: 256x176, 512x352), or 'native': "
        "each pair at its ground truth's own frame, as for WPose (default: 256x176)",
    )
    evaluate.add_argument("--metrics", default=",".join(ALL_METRICS), help="comma-separated subset")
    evaluate.add_argument("--real", type=Path, help="FID real set: the training images (default: --ground-truth)")
    evaluate.add_argument("--batch-size", type=int, default=16, help="images per batch")
    evaluate.add_argument("--out", type=Path, help="report folder (default: RESULTS/evaluation)")
    _add_common(evaluate)
    evaluate.set_defaults(handler=_cmd_evaluate)


def _smoke_resolution(arguments: argparse.Namespace) -> int:
    return arguments.resolution or (SMOKE_RESOLUTION if arguments.smoke else GENERATION.resolution)


def _echo(line: str) -> None:
    print(line, flush=True)


def _session(arguments: argparse.Namespace, models: Path | None, **options):
    """The one session of this command: its models folder, resolved device and profile."""
    from oneposetrans.session import Session

    return Session(models, arguments.device, arguments.dtype, arguments.profile, echo=_echo, **options)


def _cmd_generate(arguments: argparse.Namespace) -> int:
    from oneposetrans.generate import load_inputs, run_generate
    from oneposetrans.results import ResultsTree

    if arguments.smoke:
        print(SMOKE_BANNER, flush=True)
    tree = ResultsTree(arguments.results)
    session = _session(arguments, _models_dir(arguments))
    inputs = load_inputs(arguments.dataset, arguments.pairs, tree, arguments.captions, arguments.keypoints)
    settings = GenerationSettings(
        steps=arguments.steps,
        guidance=arguments.guidance,
        seed=arguments.seed,
        resolution=_smoke_resolution(arguments),
        batch_size=arguments.batch_size,
    )
    run_generate(inputs, tree, session, settings, echo=_echo, progress=not arguments.quiet)
    return 0


def _cmd_refine(arguments: argparse.Namespace) -> int:
    from oneposetrans.generate import source_captions
    from oneposetrans.recipe import Recipe
    from oneposetrans.results import ResultsTree

    if arguments.smoke:
        print(SMOKE_BANNER, flush=True)
    tree = ResultsTree(arguments.results)
    session = _session(arguments, _models_dir(arguments))
    recipe = Recipe(
        tree, session, refine=RefineSettings(resolution=_smoke_resolution(arguments)),
        echo=_echo, progress=not arguments.quiet, overwrite=arguments.overwrite,
    )
    recipe.refine(source_captions(tree, arguments.captions))
    return 0


def _cmd_demo(arguments: argparse.Namespace) -> int:
    from oneposetrans.demo import DemoConfig, default_workdir, launch

    if arguments.smoke:
        print(SMOKE_BANNER, flush=True)
    config = DemoConfig(
        models=_models_dir(arguments),
        workdir=arguments.workdir or default_workdir(),
        device=arguments.device,
        dtype=arguments.dtype,
        profile=arguments.profile,
        resolution=SMOKE_RESOLUTION if arguments.smoke else GENERATION.resolution,
        finetune_resolution=SMOKE_FINETUNE_RESOLUTION if arguments.smoke else FINETUNE.resolution,
        # The smoke demo must answer within a browser test's patience on a CPU.
        finetune_steps=10 if arguments.smoke else FINETUNE.steps,
        denoise_steps=4 if arguments.smoke else GENERATION.steps,
        smoke=arguments.smoke,
    )
    launch(config, arguments.host, arguments.port, arguments.share)
    return 0


def _cmd_evaluate(arguments: argparse.Namespace) -> int:
    from oneposetrans.evaluate import EvaluationRequest, evaluate, markdown_table, parse_metrics

    request = EvaluationRequest(
        results=arguments.results,
        ground_truth=arguments.ground_truth,
        models=_models_dir(arguments, tiny_work=False),
        folder=arguments.folder,
        size=arguments.size,
        metrics=parse_metrics(arguments.metrics),
        real=arguments.real,
        batch_size=arguments.batch_size,
        device=arguments.device,
        out=arguments.out,
    )
    summary = evaluate(request, echo=lambda line: print(line, flush=True))
    print(markdown_table(summary), end="")
    print(f"report: {(request.out or request.results / 'evaluation') / 'report.html'}")
    return 0


def _cmd_run(arguments: argparse.Namespace) -> int:
    from oneposetrans.recipe import RecipeRequest, check_models, parse_steps, run_recipe

    if arguments.smoke:
        print(SMOKE_BANNER, flush=True)
    steps = parse_steps(arguments.steps)
    models = _models_dir(arguments)
    check_models(steps, models, arguments.inpainter)
    request = RecipeRequest(
        dataset=arguments.dataset,
        results=arguments.results,
        pairs=arguments.pairs,
        keypoints=arguments.keypoints,
        captions=arguments.captions,
        steps=steps,
        resolution=_smoke_resolution(arguments),
        finetune_resolution=arguments.finetune_resolution or (SMOKE_FINETUNE_RESOLUTION if arguments.smoke else FINETUNE.resolution),
        denoise_steps=arguments.denoise_steps,
        finetune_steps=arguments.finetune_steps,
    )
    session = _session(arguments, models, inpainter=arguments.inpainter)
    for step, outcome in run_recipe(request, session, echo=_echo, progress=not arguments.quiet):
        print(f"  step {step:>2}: {outcome}")
    return 0


def _cmd_tool_utils(arguments: argparse.Namespace) -> int:
    if arguments.mode.startswith("inpainting_"):
        arguments.inpainter = {"inpainting_lama": "lama", "inpainting_diffusion": "diffusion"}[arguments.mode]
        return _cmd_tool(arguments, "inpaint")
    return _cmd_tool(arguments, arguments.mode)


def _tool_paths(arguments: argparse.Namespace, task: str) -> dict[str, Path]:
    from oneposetrans.results import ResultsTree

    defaults = dict(TOOL_DEFAULTS[task])
    if task == "paste" and arguments.profile == "reference":
        defaults["rgb_path"] = "reposed_rgb"
    paths = {flag: getattr(arguments, flag, None) for flag in TOOL_PATHS}
    if any(paths[flag] is None for flag in defaults):
        tree = ResultsTree(arguments.results)
        for flag, folder in defaults.items():
            if paths[flag] is None:
                paths[flag] = tree.folder(folder)
    return {flag: Path(path) for flag, path in paths.items() if path is not None}


def _cmd_tool(arguments: argparse.Namespace, task: str) -> int:
    """segment (dataset, rgba, rgb), inpaint and paste over folders, one log line per bad file."""
    from oneposetrans.results import StageLog
    from oneposetrans.segment import list_images
    from oneposetrans.stages import run_stage

    paths = _tool_paths(arguments, task)
    models = _models_dir(arguments) if task != "paste" else None
    # The log goes to the results tree that holds the outputs (RESULTS/logs), as for every stage.
    output_flag = {"inpaint": "background_path", "paste": "result_path"}.get(task)
    written = paths[output_flag] if output_flag else paths.get("rgba_path") or paths.get("rgb_path")
    if written is None:
        raise BadInputError(f"--mode {task} needs --rgba_path or --rgb_path")
    logs = written.resolve().parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if task in ("dataset", "rgba", "rgb"):
        from oneposetrans.segment import SegmentOutputs, SegmentStage

        outputs = SegmentOutputs.for_mode(task, paths.get("mask_path"), paths.get("rgba_path"), paths.get("rgb_path"))
        stage = SegmentStage(outputs, use_alpha=task != "dataset" and arguments.profile != "reference")
        images = list_images(paths["source_path"])
    elif task == "inpaint":
        from oneposetrans.inpaint import InpaintStage

        stage = InpaintStage(paths["mask_path"], paths["background_path"])
        images = list_images(paths["source_path"])
    else:
        from oneposetrans.composite import PasteStage

        stage = PasteStage(paths["background_path"], paths.get("mask_path"), paths["result_path"], arguments.profile)
        images = list_images(paths["rgb_path"])
    stage.overwrite = arguments.overwrite
    session = _session(arguments, models, inpainter=getattr(arguments, "inpainter", "lama"))
    run_stage(stage, images, session, StageLog(logs / f"{stage.name}.jsonl", stage.name), _echo, progress=not arguments.quiet)
    return 0


def _add_finetune(commands) -> None:
    defaults = FinetuneSettings()
    finetune = commands.add_parser(
        "finetune",
        help="per-image LoRA fine-tuning (one LoRA per source, or one from several views)",
        description=(
            "In-the-wild: --source IMG [IMG ...] --caption TEXT trains one LoRA from one or several photos "
            "of the same person. Datasets: --dataset NAME --pairs FILE trains one LoRA per source image the "
            "pairs list needs, reading RESULTS/images/<stem>.png. LoRAs go to RESULTS/lora/<name>.safetensors; "
            "existing ones are skipped. Under `accelerate launch` the cases are shared among the processes."
        ),
    )
    finetune.add_argument("--source", type=Path, nargs="+", help="photo(s) of one person: one LoRA from all of them")
    finetune.add_argument("--caption", help='caption of the person, "A man/woman with face, ..."')
    finetune.add_argument("--name", help="LoRA name for --source (default: stem of the first photo)")
    finetune.add_argument("--mask", type=Path, nargs="+", default=[], help="person masks for --source, in the same order (for --masked-loss)")
    finetune.add_argument("--dataset", choices=("deepfashion", "wpose"), help="dataset adapter for --pairs")
    finetune.add_argument("--pairs", type=Path, help="pairs list: DeepFashion CSV 'from,to', subset 'idx/src/tgt', or WPose 'src tgt'")
    finetune.add_argument(
        "--captions", type=Path, help="captions file 'index/name/text' (default: RESULTS/captions/captions.jsonl)"
    )
    finetune.add_argument("--overwrite", action="store_true", help="retrain LoRAs that already exist")
    finetune.add_argument("--fail-fast", action="store_true", help="stop at the first failed case")
    finetune.add_argument("--rank", type=int, default=defaults.rank, help="LoRA rank")
    finetune.add_argument("--alpha", type=int, default=defaults.alpha, help="LoRA alpha (scale = alpha / rank)")
    finetune.add_argument("--target-modules", nargs="+", default=list(defaults.target_modules), help="attention Linears to adapt")
    finetune.add_argument("--steps", "--finetune-steps", dest="steps", type=int, default=defaults.steps, help="optimisation steps per LoRA")
    finetune.add_argument("--batch-size", type=int, default=defaults.batch_size, help="crops per step")
    finetune.add_argument("--learning-rate", type=float, default=defaults.learning_rate, help="AdamW learning rate (constant)")
    finetune.add_argument("--weight-decay", type=float, default=defaults.weight_decay, help="AdamW weight decay")
    finetune.add_argument("--adam-beta1", type=float, default=defaults.adam_beta1, help="AdamW beta1")
    finetune.add_argument("--adam-beta2", type=float, default=defaults.adam_beta2, help="AdamW beta2")
    finetune.add_argument("--adam-epsilon", type=float, default=defaults.adam_epsilon, help="AdamW epsilon")
    finetune.add_argument("--resolution", type=int, default=defaults.resolution, help="shorter-side resize and square random crop size")
    finetune.add_argument("--seed", type=int, default=defaults.seed, help="seed, reset at the start of every LoRA")
    finetune.add_argument(
        "--mixed-precision", choices=("auto", "no", "fp16", "bf16"), default="auto", help="auto: fp16 on GPU, none on CPU"
    )
    finetune.add_argument("--masked-loss", action="store_true", help="weight the loss by the person mask (default profile option)")
    _add_common(finetune)
    finetune.set_defaults(handler=_cmd_finetune)


def _finetune_cases(arguments: argparse.Namespace, tree) -> list:
    from oneposetrans.caption import CaptionStore
    from oneposetrans.datasets import read_captions, read_pairs, unique_sources
    from oneposetrans.finetune import FinetuneCase
    from oneposetrans.results import stem

    if arguments.source:
        if not arguments.caption:
            raise BadInputError("--source needs --caption \"A man/woman with face, ...\"")
        name = arguments.name or stem(arguments.source[0])
        return [FinetuneCase(name, list(arguments.source), arguments.caption, list(arguments.mask))]
    if not arguments.pairs:
        raise BadInputError("finetune needs --source IMG ... --caption TEXT, or --pairs FILE for a dataset")
    captions = read_captions(arguments.captions) if arguments.captions else None
    store = CaptionStore(tree)
    stored = {} if captions is not None else store.records()
    where = arguments.captions or store.path
    cases = []
    for source in unique_sources(read_pairs(arguments.pairs)):
        name = stem(source)
        caption = captions.get(name) if captions is not None else stored.get(name, {}).get("caption")
        cases.append(
            FinetuneCase(
                name,
                [tree.file("images", f"{name}.png")],
                caption,
                [tree.file("images_mask", f"{name}.png")],
                problem=None if caption else f"{source}: no caption in {where}",
            )
        )
    return cases


def _cmd_finetune(arguments: argparse.Namespace) -> int:
    from oneposetrans.finetune import FinetuneStage
    from oneposetrans.results import ResultsTree
    from oneposetrans.stages import run_stage

    if arguments.smoke:
        print(SMOKE_BANNER, flush=True)
    tree = ResultsTree(arguments.results)
    settings = FinetuneSettings(
        rank=arguments.rank,
        alpha=arguments.alpha,
        target_modules=tuple(arguments.target_modules),
        steps=arguments.steps,
        batch_size=arguments.batch_size,
        learning_rate=arguments.learning_rate,
        weight_decay=arguments.weight_decay,
        adam_beta1=arguments.adam_beta1,
        adam_beta2=arguments.adam_beta2,
        adam_epsilon=arguments.adam_epsilon,
        resolution=arguments.resolution,
        seed=arguments.seed,
        mixed_precision=arguments.mixed_precision,
        profile=arguments.profile,
        masked_loss=arguments.masked_loss,
    )
    cases = _finetune_cases(arguments, tree)
    session = _session(arguments, _models_dir(arguments))
    stage = FinetuneStage(tree, settings, overwrite=arguments.overwrite)
    run_stage(stage, cases, session, tree.log("finetune"), _echo, progress=not arguments.quiet, fail_fast=arguments.fail_fast)
    return 0


def _cmd_caption(arguments: argparse.Namespace) -> int:
    from oneposetrans.caption import CaptionStage, CaptionStore, GeminiCaptioner, LocalVLMCaptioner, import_captions
    from oneposetrans.stages import run_stage
    from oneposetrans.image_io import IMAGE_SUFFIXES
    from oneposetrans.results import ResultsTree

    tree = ResultsTree(arguments.results)
    try:
        if arguments.import_file:
            import_captions(arguments.import_file, tree)
        else:
            folder = arguments.images or tree.folder("images")
            images = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if arguments.local_vlm is True:
                captioner = LocalVLMCaptioner(registry.require("caption-vlm", _models_dir(arguments)), arguments.device, arguments.dtype)
            elif arguments.local_vlm:
                captioner = LocalVLMCaptioner(arguments.local_vlm, arguments.device, arguments.dtype)
            else:
                captioner = GeminiCaptioner(arguments.model)
            session = _session(arguments, None)
            run_stage(CaptionStage(tree, captioner, arguments.overwrite), images, session, tree.log("caption"), _echo, not arguments.quiet)
    finally:
        if arguments.export:
            count = CaptionStore(tree).export_txt(arguments.export)
            print(f"{count} captions written to {arguments.export}")
    return 0


def _prepare_deepfashion(root: Path, results: Path | None) -> int:
    from oneposetrans.datasets import prepare_deepfashion

    counts = prepare_deepfashion(root, results)
    return 1 if counts["missing"] else 0


def _models_dir(arguments: argparse.Namespace, tiny_work: bool = True) -> Path:
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


def _cmd_repose(arguments: argparse.Namespace) -> int:
    from oneposetrans.repose import ReposeRequest, check_inputs, format_report, run_repose

    resolution = _smoke_resolution(arguments)
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
            profile=arguments.profile,
            resolution=SMOKE_FINETUNE_RESOLUTION if arguments.smoke else FinetuneSettings.resolution,
            steps=arguments.finetune_steps,
        ),
        identitynet=arguments.identitynet,
        composite=not arguments.no_composite,
        inpainter=arguments.inpainter,
    )
    # Bad inputs fail here, in about a second, before the banner, the kit build and any model load.
    checked = check_inputs(request)
    models = _models_dir(arguments)
    registry.require_all(checked.models, models)
    if arguments.smoke:
        print(SMOKE_BANNER, flush=True)
    session = _session(arguments, models, identitynet=arguments.identitynet, inpainter=arguments.inpainter)
    try:
        report = run_repose(request, session, echo=_echo, checked=checked)
    except OnePoseTransError as error:
        # A failed run still shows what each stage did before it stopped.
        if getattr(error, "report", None):
            print(format_report(error.report))
        raise
    reminder = " (smoke run: the pictures are noise)" if arguments.smoke else ""
    print(f"results in {arguments.out.resolve()}{reminder}\n" + format_report(report))
    return 0


def _cmd_models_check(arguments: argparse.Namespace) -> int:
    text, complete = registry.check(arguments.models, arguments.stage)
    print(text)
    if not complete:
        print(f"\nsome required models are missing in {arguments.models}", file=sys.stderr)
    return 0 if complete else 3


def _cmd_models_download(arguments: argparse.Namespace) -> int:
    names = registry.selected(arguments.names, arguments.task)
    if arguments.dry_run:
        return registry.download(names, arguments.models, dry_run=True)
    # Downloads are allowed only in this child process; everything else stays offline.
    environment = {**os.environ, "ONEPOSETRANS_ALLOW_DOWNLOADS": "1", "HF_HUB_OFFLINE": "0"}
    command = [sys.executable, "-m", "oneposetrans.registry", *names, "--models", str(arguments.models)]
    return subprocess.call(command, env=environment)


def _cmd_models_make_tiny(arguments: argparse.Namespace) -> int:
    from oneposetrans.testing import make_tiny_models

    make_tiny_models(arguments.dir)
    print(f"tiny-model kit (random weights) written to {arguments.dir}")
    return 0


def run_script(script: str, preset: list[str]) -> int:
    """A root script of the original project: the command ``preset`` under the script's own name,
    so that its ``--help`` and errors say ``lora_wpose.py``, not ``oneposetrans finetune``."""
    parser = build_parser()
    name = Path(script).name
    command = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[preset[0]]
    command.prog = name
    command.description = f"{name} is `python -m oneposetrans {' '.join(preset)}`. " + (command.description or "")
    return main([*preset, *sys.argv[1:]], parser)


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    arguments = (parser or build_parser()).parse_args(argv)
    from oneposetrans import progress

    progress.set_enabled(not getattr(arguments, "quiet", False))
    try:
        if str(getattr(arguments, "device", "")).startswith("cuda"):
            from oneposetrans.runtime import check_device_available

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
