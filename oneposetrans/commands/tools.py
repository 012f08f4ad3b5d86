"""`segment`, `inpaint`, `paste` and `tool-utils`: the stages over folders, as the original tool_utils.py."""

from __future__ import annotations

import argparse
from pathlib import Path

from oneposetrans.commands import add_common, echo, models_dir, open_session
from oneposetrans.errors import BadInputError
from oneposetrans.inpaint import INPAINTERS
from oneposetrans.profiles import profile_named
from oneposetrans.results import ResultsTree
from oneposetrans.segment import list_images, SEGMENT_MODES, SegmentOutputs


def add(commands) -> None:
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
    add_common(parser)





def _cmd_tool_utils(arguments: argparse.Namespace) -> int:
    if arguments.mode.startswith("inpainting_"):
        arguments.inpainter = {"inpainting_lama": "lama", "inpainting_diffusion": "diffusion"}[arguments.mode]
        return _cmd_tool(arguments, "inpaint")
    return _cmd_tool(arguments, arguments.mode)


def _tool_paths(arguments: argparse.Namespace, task: str) -> dict[str, Path]:
    defaults = dict(TOOL_DEFAULTS[task])
    if task == "paste" and profile_named(arguments.profile).paste_matte == "mask":
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
    from oneposetrans.recipe import Recipe

    paths = _tool_paths(arguments, task)
    models = models_dir(arguments) if task != "paste" else None
    # The log goes to the results tree that holds the outputs (RESULTS/logs), as for every stage.
    output_flag = {"inpaint": "background_path", "paste": "result_path"}.get(task)
    written = paths[output_flag] if output_flag else paths.get("rgba_path") or paths.get("rgb_path")
    if written is None:
        raise BadInputError(f"--mode {task} needs --rgba_path or --rgb_path")
    segmenting = task in ("dataset", "rgba", "rgb")
    outputs = SegmentOutputs.for_mode(task, paths.get("mask_path"), paths.get("rgba_path"), paths.get("rgb_path")) if segmenting else None
    (written.resolve().parent / "logs").mkdir(parents=True, exist_ok=True)
    session = open_session(arguments, models, inpainter=getattr(arguments, "inpainter", "lama"))
    # The folders are the user's: the tree only names the log beside them.
    tree = ResultsTree(written.resolve().parent, create=False)
    recipe = Recipe(tree, session, echo=echo, progress=not arguments.quiet, overwrite=arguments.overwrite)
    if segmenting:
        recipe.segment(list_images(paths["source_path"]), outputs, use_alpha=task != "dataset" and not session.profile.resegment_results)
    elif task == "inpaint":
        recipe.inpaint(list_images(paths["source_path"]), paths["mask_path"], paths["background_path"])
    else:
        recipe.paste_images(list_images(paths["rgb_path"]), paths["background_path"], paths.get("mask_path"), paths["result_path"])
    return 0
