"""`caption`: captions by Gemini or a local VLM, or imported from a file."""

from __future__ import annotations

import argparse
from pathlib import Path

from oneposetrans import registry
from oneposetrans.caption import CaptionStore, GeminiCaptioner, import_captions, LocalVLMCaptioner
from oneposetrans.commands import add_common, echo, models_dir, open_session
from oneposetrans.image_io import IMAGE_SUFFIXES
from oneposetrans.profiles import profile_named
from oneposetrans.results import ResultsTree


def add(commands) -> None:
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
    add_common(caption)
    caption.set_defaults(handler=handle)


def handle(arguments: argparse.Namespace) -> int:
    from oneposetrans.recipe import Recipe

    tree = ResultsTree(arguments.results)
    try:
        if arguments.import_file:
            import_captions(arguments.import_file, tree, profile=profile_named(arguments.profile))
        else:
            folder = arguments.images or tree.folder("images")
            images = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if arguments.local_vlm is True:
                captioner = LocalVLMCaptioner(registry.require("caption-vlm", models_dir(arguments)), arguments.device, arguments.dtype)
            elif arguments.local_vlm:
                captioner = LocalVLMCaptioner(arguments.local_vlm, arguments.device, arguments.dtype)
            else:
                captioner = GeminiCaptioner(arguments.model)
            recipe = Recipe(tree, open_session(arguments, None), echo=echo, progress=not arguments.quiet, overwrite=arguments.overwrite)
            recipe.caption(images, captioner)
    finally:
        if arguments.export:
            count = CaptionStore(tree).export_txt(arguments.export)
            print(f"{count} captions written to {arguments.export}")
    return 0
