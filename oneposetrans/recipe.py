"""The whole numbered dataset recipe of the original README, steps 1 to 11, in one process.

Each step is the same function its own command runs, so ``run --steps 5`` and ``generate`` do
the same work, and every step resumes: a finished case is never computed twice. Models are
loaded once per process and shared between the steps that use them (GroundingDINO + SAM in
steps 1, 6, 7 and 10; the generator's UNet, VAE and encoders in steps 5 and 9). A step whose
cases partly failed is reported, and the following steps go on with the cases that exist.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from oneposetrans.errors import BadInputError, CaseFailures

STEPS = {
    1: "segment the sources (images_rgba, images_mask)",
    2: "captions",
    3: "per-image LoRA fine-tuning",
    4: "background inpainting (images_inpainted)",
    5: "reposing (reposed_result)",
    6: "RGBA of the results (reposed_rgba)",
    7: "person on black and mask of the results (reposed_rgb, reposed_mask)",
    8: "paste onto the background (reposed_final_result)",
    9: "refining (refined_result)",
    10: "person on black and mask of the refined results (refined_rgb, refined_mask)",
    11: "paste the refined results (refined_final_result)",
}


def parse_steps(text: str) -> list[int]:
    """``"1-11"``, ``"5"``, ``"1-4,9"`` -> sorted step numbers."""
    steps: set[int] = set()
    try:
        for part in text.split(","):
            first, _, last = part.partition("-")
            steps.update(range(int(first), int(last or first) + 1))
    except ValueError:
        raise BadInputError(f"--steps {text!r}: expected numbers and ranges such as 1-11 or 1-4,9") from None
    unknown = sorted(steps - set(STEPS))
    if unknown or not steps:
        raise BadInputError(f"--steps {text!r}: the recipe has steps 1 to 11")
    return sorted(steps)


@dataclass
class RecipeRequest:
    dataset: str
    results: Path
    models: Path
    pairs: Path
    keypoints: Path | None = None
    captions: Path | None = None
    steps: list[int] = field(default_factory=lambda: list(STEPS))
    profile: str = "default"
    device: str = "auto"
    dtype: str = "auto"
    resolution: int = 1024
    finetune_resolution: int = 512
    inpainter: str = "lama"
    denoise_steps: int | None = None
    """Overrides the published 25 denoising steps of steps 5 and 9 (quick checks only)."""
    finetune_steps: int | None = None


def run_recipe(request: RecipeRequest, echo: Callable[[str], None] = print) -> list[tuple[int, str]]:
    """Run the requested steps in order; returns (step, outcome) and raises :class:`CaseFailures`
    at the end if any step had failed cases (each reason is in RESULTS/logs/<stage>.jsonl)."""
    import torch
    from accelerate import PartialState

    from oneposetrans.datasets import read_pairs, unique_sources
    from oneposetrans.repose import GenerationSettings, Reposer
    from oneposetrans.results import ResultsTree, stem
    from oneposetrans.segment import PersonSegmenter

    tree = ResultsTree(request.results)
    state = PartialState(cpu=request.device == "cpu" or not torch.cuda.is_available())
    pairs = read_pairs(request.pairs)
    sources = [stem(name) for name in unique_sources(pairs)]
    segmenter = functools.cache(lambda: PersonSegmenter(request.models, request.device, request.profile))
    reposer = functools.cache(lambda: Reposer(request.models, request.device, request.dtype, request.profile))
    quiet = lambda line: echo(f"  {line}")  # noqa: E731
    outcomes: list[tuple[int, str]] = []

    def step_segment(source: str, mode: str, rgba: str | None, rgb: str | None, mask: str | None, names=None) -> None:
        from oneposetrans.segment import SegmentOutputs, list_images, run_segment

        outputs = SegmentOutputs.for_mode(
            mode,
            tree.folder(mask) if mask else None,
            tree.folder(rgba) if rgba else None,
            tree.folder(rgb) if rgb else None,
        )
        images = [p for p in list_images(tree.folder(source)) if names is None or p.stem in names]
        run_segment(
            images[state.process_index :: state.num_processes], outputs, tree.log("segment"), segmenter,
            echo=quiet, use_alpha=mode != "dataset" and request.profile != "reference",
        )

    def step_captions() -> None:
        from oneposetrans.caption import CaptionStore, automatic_captioner, import_captions, run_captions

        if request.captions is not None:
            if state.is_main_process:
                import_captions(request.captions, tree)
            state.wait_for_everyone()
            return
        missing = [tree.file("images", f"{name}.png") for name in sources if name not in CaptionStore(tree).records()]
        if missing and state.is_main_process:
            run_captions(missing, tree, automatic_captioner(request.models, request.device))
        state.wait_for_everyone()

    def step_finetune() -> None:
        from oneposetrans.finetune import FinetuneCase, FinetuneSettings, run_finetune
        from oneposetrans.generate import source_captions

        captions = source_captions(tree, request.captions)
        cases = [
            FinetuneCase(
                name,
                [tree.file("images", f"{name}.png")],
                captions.get(name),
                [tree.file("images_mask", f"{name}.png")],
                problem=None if captions.get(name) else f"{name}: no caption",
            )
            for name in sources
        ]
        settings = FinetuneSettings(profile=request.profile, resolution=request.finetune_resolution)
        if request.finetune_steps:
            settings.steps = request.finetune_steps
        run_finetune(cases, tree, request.models, settings, device=request.device, echo=quiet)

    def step_inpaint() -> None:
        from oneposetrans.inpaint import make_inpainter, run_inpaint

        images = [tree.file("images", f"{name}.png") for name in sources][state.process_index :: state.num_processes]
        factory = lambda: make_inpainter(request.inpainter, request.models, request.device, request.dtype, request.profile)  # noqa: E731
        run_inpaint(images, tree.folder("images_mask"), tree.folder("images_inpainted"), tree.log("inpaint"), factory, echo=quiet)

    def step_generate() -> None:
        from oneposetrans.generate import load_inputs, run_generate

        inputs = load_inputs(request.dataset, request.pairs, tree, request.captions, request.keypoints, request.models, request.device)
        settings = GenerationSettings(resolution=request.resolution)
        if request.denoise_steps:
            settings.steps = request.denoise_steps
        run_generate(inputs, tree, reposer, settings, profile=request.profile, device=request.device, echo=quiet)

    def step_paste(foreground: str, mask: str, output: str) -> None:
        from oneposetrans.composite import run_paste
        from oneposetrans.segment import list_images

        if request.profile == "reference":
            foreground = foreground.replace("_result", "_rgb")
        images = list_images(tree.folder(foreground))[state.process_index :: state.num_processes]
        run_paste(images, tree.folder("images_inpainted"), tree.folder(mask), tree.folder(output), tree.log("paste"), request.profile, echo=quiet)

    def step_refine() -> None:
        from oneposetrans.generate import source_captions
        from oneposetrans.refine import RefineSettings, Refiner, run_refine

        refiner = lambda: Refiner(reposer(), request.models)  # noqa: E731
        settings = RefineSettings(resolution=request.resolution)
        if request.denoise_steps:
            settings.steps = request.denoise_steps
        run_refine(
            tree, refiner, source_captions(tree, request.captions), settings,
            profile=request.profile, echo=quiet, process=(state.process_index, state.num_processes),
        )

    actions: dict[int, Callable[[], None]] = {
        # All of images/, as published: the targets' masks serve the masked metrics.
        1: lambda: step_segment("images", "dataset", "images_rgba", None, "images_mask"),
        2: step_captions,
        3: step_finetune,
        4: step_inpaint,
        5: step_generate,
        6: lambda: step_segment("reposed_result", "rgba", "reposed_rgba", None, None),
        7: lambda: step_segment("reposed_result", "rgb", None, "reposed_rgb", "reposed_mask"),
        8: lambda: step_paste("reposed_result", "reposed_mask", "reposed_final_result"),
        9: step_refine,
        10: lambda: step_segment("refined_result", "rgb", None, "refined_rgb", "refined_mask"),
        11: lambda: step_paste("refined_result", "refined_mask", "refined_final_result"),
    }
    failed = []
    for step in request.steps:
        echo(f"step {step}: {STEPS[step]}")
        started = time.perf_counter()
        try:
            actions[step]()
            outcomes.append((step, f"done in {time.perf_counter() - started:.1f} s"))
        except CaseFailures as error:
            failed.append(f"step {step}: {error}")
            outcomes.append((step, f"some cases failed: {error}"))
        # Steps read what earlier steps wrote, possibly in another process.
        state.wait_for_everyone()
    if failed:
        raise CaseFailures("; ".join(failed))
    return outcomes


def recipe_models(steps: list[int], inpainter: str = "lama") -> list[str]:
    """Registry names the given steps need, to check before any work starts."""
    from oneposetrans.repose import REPOSE_MODELS

    names: list[str] = []
    if {1, 6, 7, 10} & set(steps):
        names += ["grounding-dino", "sam"]
    if 3 in steps:
        names.append("sdxl-base")
    if 4 in steps:
        names.append("lama" if inpainter == "lama" else "sdxl-inpainting")
    if {5, 9} & set(steps):
        names += list(REPOSE_MODELS)
    return list(dict.fromkeys(names))


def check_models(steps: list[int], models: str | os.PathLike, inpainter: str = "lama") -> None:
    from oneposetrans import registry

    for name in recipe_models(steps, inpainter):
        registry.require(name, models)
