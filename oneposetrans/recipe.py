"""The numbered recipe of the original README, steps 1 to 11, as stages over one results tree.

:class:`Recipe` builds each step's stage and runs it with :func:`~oneposetrans.stages.run_stage`;
every flow is a list of these steps: the ``run`` command (a dataset's pairs, steps 1-11), the
``repose`` command (one photo and its target poses, :mod:`oneposetrans.repose`) and the demo
(a visitor's photo, one step per button). So a step does the same work whichever flow runs
it, each step resumes (a finished case is never computed twice), and the models are loaded once
per process by the :class:`~oneposetrans.session.Session` and shared between the steps that use
them (GroundingDINO + SAM in steps 1, 6, 7 and 10; the generator in steps 5 and 9). A step
whose cases partly failed is reported, and the following steps go on with the cases that exist.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from oneposetrans.errors import BadInputError, CaseFailures
from oneposetrans.results import ResultsTree, stem
from oneposetrans.settings import FinetuneSettings, GenerationSettings, RefineSettings
from oneposetrans.stages import run_stage

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


class Recipe:
    """The steps over ``tree`` with ``session``'s models; each method runs one step's stage.

    ``shown_as`` maps an image stem to the file the user gave, for messages.
    """

    def __init__(
        self,
        tree: ResultsTree,
        session,
        generation: GenerationSettings | None = None,
        finetune: FinetuneSettings | None = None,
        refine: RefineSettings | None = None,
        echo: Callable[[str], None] = print,
        progress: bool = True,
        overwrite: bool = False,
        shown_as: dict[str, str] | None = None,
    ):
        self.tree = tree
        self.session = session
        self.generation = generation or GenerationSettings()
        self.finetune_settings = finetune or FinetuneSettings()
        self.refine_settings = refine or RefineSettings(resolution=self.generation.resolution)
        self.echo = echo
        self.progress = progress
        self.overwrite = overwrite
        self.shown_as = shown_as or {}

    def _run(self, stage, cases: list, log: str | None = None) -> dict[str, int]:
        stage.overwrite = self.overwrite
        return run_stage(stage, cases, self.session, self.tree.log(log or stage.name), self.echo, self.progress)

    def images(self, names: list[str] | None = None) -> list[Path]:
        """``images/<name>.png`` of ``names``, or all of ``images/``."""
        from oneposetrans.segment import list_images

        if names is None:
            return list_images(self.tree.folder("images"))
        return [self.tree.file("images", f"{name}.png") for name in names]

    # -- the steps ----------------------------------------------------------------------------

    def segment_sources(self, names: list[str] | None = None) -> dict[str, int]:
        """Step 1: each photo as RGBA with the person as alpha, and the dilated person mask."""
        from oneposetrans.segment import SegmentOutputs, SegmentStage

        outputs = SegmentOutputs.for_mode("dataset", self.tree.folder("images_mask"), self.tree.folder("images_rgba"), None)
        return self._run(SegmentStage(outputs, shown_as=self.shown_as), self.images(names))

    def caption(self, names: list[str], captioner=None) -> dict[str, int]:
        """Step 2: captions of the photos that have none in the store."""
        from oneposetrans.caption import CaptionStage

        return self._run(CaptionStage(self.tree, captioner, shown_as=self.shown_as), self.images(names))

    def finetune(self, cases: list) -> dict[str, int]:
        """Step 3: one LoRA per case (:class:`~oneposetrans.finetune.FinetuneCase`)."""
        from oneposetrans.finetune import FinetuneStage

        return self._run(FinetuneStage(self.tree, self.finetune_settings), cases)

    def inpaint(self, names: list[str]) -> dict[str, int]:
        """Step 4: each source's background with the person removed."""
        from oneposetrans.inpaint import InpaintStage

        stage = InpaintStage(self.tree.folder("images_mask"), self.tree.folder("images_inpainted"))
        return self._run(stage, self.images(names))

    def repose(self, cases: list, pose_of: Callable, require_mask: bool = False, log: str = "generate"):
        """Step 5: every target pose of each source (:class:`~oneposetrans.generator.ReposeCase`);
        returns the counts and the stage (its notes and conditioning describe the last source)."""
        from oneposetrans.generator import ReposeStage

        stage = ReposeStage(self.tree, self.generation, pose_of, require_mask=require_mask, echo=self.echo)
        return self._run(stage, cases, log), stage

    def segment_results(self, kind: str, writes: tuple[str, ...], names: list[str] | None = None) -> dict[str, int]:
        """Steps 6, 7 and 10: the ``reposed`` or ``refined`` results as RGBA, person on black and
        mask (``writes`` names which). In the default profile a result's LayerDiffuse alpha is its
        mask and no model runs; the reference profile segments every result again, as published."""
        from oneposetrans.segment import SegmentOutputs, SegmentStage, list_images

        outputs = SegmentOutputs(
            rgba=self.tree.folder(f"{kind}_rgba") if "rgba" in writes else None,
            rgb=self.tree.folder(f"{kind}_rgb") if "rgb" in writes else None,
            mask=self.tree.folder(f"{kind}_mask") if "mask" in writes else None,
        )
        results = [p for p in list_images(self.tree.folder(f"{kind}_result")) if names is None or p.name in names]
        return self._run(SegmentStage(outputs, use_alpha=not self.session.profile.resegment_results), results)

    def paste(self, kind: str, names: list[str] | None = None) -> dict[str, int]:
        """Steps 8 and 11: the ``reposed`` or ``refined`` results onto their sources' backgrounds
        (in the reference profile, the person on black of step 7 or 10 with its mask, as published)."""
        from oneposetrans.composite import PasteStage
        from oneposetrans.segment import list_images

        folder = f"{kind}_rgb" if self.session.profile.paste_matte == "mask" else f"{kind}_result"
        foregrounds = [p for p in list_images(self.tree.folder(folder)) if names is None or p.name in names]
        stage = PasteStage(
            self.tree.folder("images_inpainted"), self.tree.folder(f"{kind}_mask"),
            self.tree.folder(f"{kind}_final_result"),
        )
        return self._run(stage, foregrounds)

    def refine(self, captions: dict[str, str], names: list[str] | None = None) -> dict[str, int]:
        """Step 9: the img2img refining pass of the reposed results."""
        from oneposetrans.refine import RefineStage, refine_inputs

        stage = RefineStage(self.tree, captions, self.refine_settings)
        return self._run(stage, refine_inputs(self.tree, self.session.profile, names))


@dataclass
class RecipeRequest:
    dataset: str
    results: Path
    pairs: Path
    keypoints: Path | None = None
    captions: Path | None = None
    steps: list[int] = field(default_factory=lambda: list(STEPS))
    resolution: int = GenerationSettings.resolution
    finetune_resolution: int = FinetuneSettings.resolution
    denoise_steps: int | None = None
    """Overrides the published 25 denoising steps of steps 5 and 9 (quick checks only)."""
    finetune_steps: int | None = None


def run_recipe(request: RecipeRequest, session, echo: Callable[[str], None] = print, progress: bool = True) -> list[tuple[int, str]]:
    """Run the requested steps in order over a dataset's pairs; returns (step, outcome) and raises
    :class:`CaseFailures` at the end if any step had failed cases (each reason is in
    RESULTS/logs/<stage>.jsonl)."""
    from oneposetrans.caption import import_captions
    from oneposetrans.datasets import read_pairs, unique_sources
    from oneposetrans.finetune import FinetuneCase
    from oneposetrans.generate import load_inputs, pose_source, source_captions
    from oneposetrans.generator import group_by_source

    tree = ResultsTree(request.results)
    generation = GenerationSettings(resolution=request.resolution)
    finetune = FinetuneSettings(resolution=request.finetune_resolution)
    refine = RefineSettings(resolution=request.resolution)
    if request.denoise_steps:
        generation.steps = refine.steps = request.denoise_steps
    if request.finetune_steps:
        finetune.steps = request.finetune_steps
    recipe = Recipe(tree, session, generation, finetune, refine, echo=lambda line: echo(f"  {line}"), progress=progress)
    sources = [stem(name) for name in unique_sources(read_pairs(request.pairs))]

    def captions() -> None:
        if request.captions is None:
            recipe.caption(sources)
            return
        if session.is_main_process:
            import_captions(request.captions, tree)
        session.wait_for_everyone()

    def finetune_cases() -> list[FinetuneCase]:
        known = source_captions(tree, request.captions)
        return [
            FinetuneCase(
                name, [tree.file("images", f"{name}.png")], known.get(name), [tree.file("images_mask", f"{name}.png")],
                problem=None if known.get(name) else f"{name}: no caption",
            )
            for name in sources
        ]

    def repose() -> None:
        inputs = load_inputs(request.dataset, request.pairs, tree, request.captions, request.keypoints)
        pose_of = pose_source(inputs, tree, generation.resolution, session)
        # Reproducing the paper needs the published input; elsewhere the whole photo will do, with a note.
        recipe.repose(group_by_source(inputs.pairs, inputs.captions), pose_of, require_mask=session.profile.require_person_mask)

    actions: dict[int, Callable[[], object]] = {
        # All of images/, as published: the targets' masks serve the masked metrics.
        1: recipe.segment_sources,
        2: captions,
        3: lambda: recipe.finetune(finetune_cases()),
        4: lambda: recipe.inpaint(sources),
        5: repose,
        6: lambda: recipe.segment_results("reposed", ("rgba",)),
        7: lambda: recipe.segment_results("reposed", ("rgb", "mask")),
        8: lambda: recipe.paste("reposed"),
        9: lambda: recipe.refine(source_captions(tree, request.captions)),
        10: lambda: recipe.segment_results("refined", ("rgb", "mask")),
        11: lambda: recipe.paste("refined"),
    }
    failed, outcomes = [], []
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
        session.wait_for_everyone()
    if failed:
        raise CaseFailures("; ".join(failed))
    return outcomes


def recipe_models(steps: list[int], inpainter: str = "lama") -> list[str]:
    """Registry names the given steps need, to check before any work starts."""
    from oneposetrans import registry

    names: list[str] = []
    if {1, 6, 7, 10} & set(steps):
        names += ["grounding-dino", "sam"]
    if 3 in steps:
        names.append("sdxl-base")
    if 4 in steps:
        names.append("lama" if inpainter == "lama" else "sdxl-inpainting")
    if {5, 9} & set(steps):
        names += list(registry.GENERATOR_MODELS)
    return list(dict.fromkeys(names))


def check_models(steps: list[int], models: str | os.PathLike, inpainter: str = "lama") -> None:
    from oneposetrans import registry

    registry.require_all(recipe_models(steps, inpainter), models)
