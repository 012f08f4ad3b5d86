"""The numbered recipe of the original README, steps 1 to 11, as stages over one results tree.

:class:`Recipe` builds each step's stage and runs it with :func:`~oneposetrans.stages.run_stage`;
every flow is a list of these steps: the ``run`` command (a dataset's pairs, steps 1-11), the
``repose`` command (one photo and its target poses, :mod:`oneposetrans.repose`), the demo (a
visitor's photo, one step per button) and the stage commands (``segment``, ``caption``,
``finetune``, ``inpaint``, ``generate``, ``paste``, ``refine``). So a step does the same work
whichever flow runs it, each step resumes (a finished case is never computed twice), and the
models are loaded once per process by the :class:`~oneposetrans.session.Session` and shared
between the steps that use them (GroundingDINO + SAM in steps 1, 6, 7 and 10; the generator in
steps 5 and 9). Each stage says which models it needs, and a flow checks all of them before its
first step (:meth:`Recipe.require`). A step whose cases partly failed is reported, and the
following steps go on with the cases that exist.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from oneposetrans import registry
from oneposetrans.caption import CaptionStage, CaptionStore, import_captions
from oneposetrans.composite import PasteStage
from oneposetrans.datasets import read_pairs, unique_sources
from oneposetrans.errors import BadInputError, CaseFailures
from oneposetrans.finetune import FinetuneCase, FinetuneStage
from oneposetrans.generate import GenerateInputs, GenerateStage, group_by_source, load_inputs, pose_source, source_captions
from oneposetrans.inpaint import InpaintStage
from oneposetrans.pose import PoseMaps, PoseStage
from oneposetrans.refine import RefineStage, refine_inputs
from oneposetrans.results import ResultsTree, stem
from oneposetrans.segment import SegmentOutputs, SegmentStage, list_images
from oneposetrans.settings import FinetuneSettings, GenerationSettings, RefineSettings
from oneposetrans.stages import Stage, StageReport, run_stage

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
    """The steps over ``tree`` with ``session``'s models; each step method builds that step's
    stage (loading nothing) and runs it, returning its :class:`~oneposetrans.stages.StageReport`.

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
        fail_fast: bool = False,
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
        self.fail_fast = fail_fast
        self.shown_as = shown_as or {}

    # -- the driver -----------------------------------------------------------------------------

    def run(self, stage: Stage, cases: list, log: str | None = None) -> StageReport:
        """``stage`` over ``cases`` by the one driver, logged to ``logs/<log or stage name>.jsonl``."""
        stage.overwrite = self.overwrite
        return run_stage(stage, cases, self.session, self.tree.log(log or stage.name), self.echo, self.progress, self.fail_fast)

    def require(self, stages: list[Stage]) -> None:
        """Every model the stages need, checked at once: one line names all the missing ones."""
        registry.require_all([name for stage in stages for name in stage.models(self.session)], self.session.models)

    def images(self, names: list[str] | None = None) -> list[Path]:
        """``images/<name>.png`` of ``names``, or all of ``images/``."""
        if names is None:
            return list_images(self.tree.folder("images"))
        return [self.tree.file("images", f"{name}.png") for name in names]

    # -- the stages of the steps, built without loading a model ----------------------------------

    def segment_stage(self, outputs: SegmentOutputs | None = None, use_alpha: bool = False) -> SegmentStage:
        """Step 1 by default: each photo as RGBA with the person as alpha, and the dilated mask."""
        tree = self.tree
        outputs = outputs or SegmentOutputs.for_mode("dataset", tree.folder("images_mask"), tree.folder("images_rgba"), None)
        return SegmentStage(outputs, use_alpha=use_alpha, shown_as=self.shown_as)

    def results_stage(self, kind: str, writes: tuple[str, ...]) -> SegmentStage:
        """Steps 6, 7 and 10: the ``reposed`` or ``refined`` results as RGBA, person on black and
        mask (``writes`` names which). In the default profile a result's LayerDiffuse alpha is its
        mask and no model runs; the reference profile segments every result again, as published."""
        folder = self.tree.folder
        outputs = SegmentOutputs(
            rgba=folder(f"{kind}_rgba") if "rgba" in writes else None,
            rgb=folder(f"{kind}_rgb") if "rgb" in writes else None,
            mask=folder(f"{kind}_mask") if "mask" in writes else None,
        )
        return self.segment_stage(outputs, use_alpha=not self.session.profile.resegment_results)

    def caption_stage(self, captioner=None) -> CaptionStage:
        return CaptionStage(self.tree, captioner, shown_as=self.shown_as)

    def finetune_stage(self) -> FinetuneStage:
        return FinetuneStage(self.tree, self.finetune_settings)

    def inpaint_stage(self, masks: Path | None = None, backgrounds: Path | None = None) -> InpaintStage:
        return InpaintStage(masks or self.tree.folder("images_mask"), backgrounds or self.tree.folder("images_inpainted"))

    def pose_stage(self, files: dict[str, Path], source: str | None = None) -> PoseStage:
        return PoseStage(PoseMaps(self.tree, self.session.profile), files, self.generation.resolution, source)

    def generate_stage(self, pose_of: Callable, require_mask: bool = False, detects_poses: bool = False) -> GenerateStage:
        return GenerateStage(self.tree, self.generation, pose_of, require_mask=require_mask, echo=self.echo, detects_poses=detects_poses)

    def dataset_stage(self, inputs: GenerateInputs) -> GenerateStage:
        """Step 5 over a dataset: its adapter gives the target poses (WPose detects them in the
        target photos); reproducing the paper needs the published input, elsewhere the whole
        photo serves a source without its person mask, with a note."""
        pose_of = pose_source(inputs, self.tree, self.generation.resolution, self.session)
        profile = self.session.profile
        return self.generate_stage(pose_of, require_mask=profile.require_person_mask, detects_poses=inputs.dataset == "wpose")

    def dataset_stages(self, inputs: GenerateInputs | None) -> dict[int, Stage]:
        """The stage of each numbered step over a dataset (``inputs``: its pairs, for step 5)."""
        return {
            1: self.segment_stage(),
            2: self.caption_stage(),
            3: self.finetune_stage(),
            4: self.inpaint_stage(),
            5: self.dataset_stage(inputs) if inputs is not None else None,
            6: self.results_stage("reposed", ("rgba",)),
            7: self.results_stage("reposed", ("rgb", "mask")),
            8: self.paste_stage("reposed"),
            9: self.refine_stage({}),
            10: self.results_stage("refined", ("rgb", "mask")),
            11: self.paste_stage("refined"),
        }

    def paste_stage(self, kind: str) -> PasteStage:
        folder = self.tree.folder
        return PasteStage(folder("images_inpainted"), folder(f"{kind}_mask"), folder(f"{kind}_final_result"))

    def refine_stage(self, captions: dict[str, str]) -> RefineStage:
        return RefineStage(self.tree, captions, self.refine_settings)

    # -- the steps ------------------------------------------------------------------------------

    def segment_sources(self, names: list[str] | None = None) -> StageReport:
        """Step 1: each photo as RGBA with the person as alpha, and the dilated person mask."""
        return self.run(self.segment_stage(), self.images(names))

    def segment(self, images: list[Path], outputs: SegmentOutputs, use_alpha: bool = False) -> StageReport:
        """Any folder's images, written where ``outputs`` says (the ``segment`` command's modes)."""
        return self.run(self.segment_stage(outputs, use_alpha), images)

    def caption(self, images: list[Path], captioner=None) -> StageReport:
        """Step 2: captions of the photos that have none in the store."""
        return self.run(self.caption_stage(captioner), images)

    def caption_of(self, name: str, given: str | None = None, bundled: str | None = None, shown: str | None = None) -> tuple[str, str, bool]:
        """One photo's caption, where it came from, and whether it was in the store already:
        ``given`` (stored as the user's), the store's, ``bundled`` (the bundled photo's), or
        written by the session's captioner (step 2)."""
        store = CaptionStore(self.tree)
        if given:
            store.put(name, given, origin="user")
            return given, "given with --caption", False
        stored = store.get(name)
        if stored:
            return stored, str(store.path), True
        if bundled:
            store.put(name, bundled, origin="bundled")
            return bundled, "bundled caption of the bundled photo", False
        try:
            self.caption(self.images([name]))
        except CaseFailures:
            raise BadInputError(f"{shown or name}: no usable caption (the reason is above); pass --caption") from None
        record = store.records()[name]
        return record["caption"], f"by {record['origin']}", False

    def import_captions(self, path: Path) -> None:
        """Step 2 from a captions file: the main process brings it into the store."""
        if self.session.is_main_process:
            import_captions(path, self.tree, profile=self.session.profile)
        self.session.wait_for_everyone()

    def finetune(self, cases: list[FinetuneCase]) -> StageReport:
        """Step 3: one LoRA per case."""
        return self.run(self.finetune_stage(), cases)

    def inpaint(self, images: list[Path], masks: Path | None = None, backgrounds: Path | None = None) -> StageReport:
        """Step 4: each photo's background with the person removed (the mask of the same stem)."""
        return self.run(self.inpaint_stage(masks, backgrounds), images)

    def poses(self, files: dict[str, Path], source: str | None = None) -> StageReport:
        """The target poses' ControlNet maps into the pose cache (the ``repose`` flow and the demo)."""
        return self.run(self.pose_stage(files, source), list(files))

    def generate(self, cases: list, pose_of: Callable, log: str | None = None) -> StageReport:
        """Step 5: every target pose of each source (:class:`~oneposetrans.generate.GenerateCase`)."""
        return self.run(self.generate_stage(pose_of), cases, log)

    def generate_pairs(self, inputs: GenerateInputs) -> StageReport:
        """Step 5 over a dataset's pairs, each source's targets together."""
        return self.run(self.dataset_stage(inputs), group_by_source(inputs.pairs, inputs.captions))

    def segment_results(self, kind: str, writes: tuple[str, ...], names: list[str] | None = None) -> StageReport:
        """Steps 6, 7 and 10 (see :meth:`results_stage`)."""
        results = [p for p in list_images(self.tree.folder(f"{kind}_result")) if names is None or p.name in names]
        return self.run(self.results_stage(kind, writes), results)

    def paste(self, kind: str, names: list[str] | None = None) -> StageReport:
        """Steps 8 and 11: the ``reposed`` or ``refined`` results onto their sources' backgrounds
        (where the profile pastes by the mask, the person on black of step 7 or 10, as published)."""
        folder = f"{kind}_rgb" if self.session.profile.paste_matte == "mask" else f"{kind}_result"
        foregrounds = [p for p in list_images(self.tree.folder(folder)) if names is None or p.name in names]
        return self.run(self.paste_stage(kind), foregrounds)

    def paste_images(self, foregrounds: list[Path], backgrounds: Path, masks: Path | None, out: Path) -> StageReport:
        """Any folder's results onto their backgrounds (the ``paste`` command)."""
        return self.run(PasteStage(backgrounds, masks, out), foregrounds)

    def refine(self, captions: dict[str, str], names: list[str] | None = None) -> StageReport:
        """Step 9: the img2img refining pass of the reposed results."""
        return self.run(self.refine_stage(captions), refine_inputs(self.tree, self.session.profile, names))


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
    RESULTS/logs/<stage>.jsonl). Every model the steps need is checked before step 1."""
    generation = GenerationSettings(resolution=request.resolution)
    finetune = FinetuneSettings(resolution=request.finetune_resolution)
    refine = RefineSettings(resolution=request.resolution)
    if request.denoise_steps:
        generation.steps = refine.steps = request.denoise_steps
    if request.finetune_steps:
        finetune.steps = request.finetune_steps
    sources = [stem(name) for name in unique_sources(read_pairs(request.pairs))]

    def inputs(tree: ResultsTree) -> GenerateInputs:
        # Read when step 5 starts: step 2 may have written the captions.
        return load_inputs(request.dataset, request.pairs, tree, request.captions, request.keypoints, session.profile)

    # Every model the steps need, from their stages, before anything is written.
    planned = Recipe(ResultsTree(request.results, create=False), session, generation, finetune, refine)
    stages = planned.dataset_stages(inputs(planned.tree) if 5 in request.steps else None)
    planned.require([stages[step] for step in request.steps])
    tree = ResultsTree(request.results)
    recipe = Recipe(tree, session, generation, finetune, refine, echo=lambda line: echo(f"  {line}"), progress=progress)

    def captions() -> None:
        if request.captions is None:
            recipe.caption(recipe.images(sources))
        else:
            recipe.import_captions(request.captions)

    def finetune_cases() -> list[FinetuneCase]:
        known = source_captions(tree, request.captions, session.profile)
        return [
            FinetuneCase(
                name, [tree.file("images", f"{name}.png")], known.get(name), [tree.file("images_mask", f"{name}.png")],
                problem=None if known.get(name) else f"{name}: no caption",
            )
            for name in sources
        ]

    actions: dict[int, Callable[[], object]] = {
        # All of images/, as published: the targets' masks serve the masked metrics.
        1: recipe.segment_sources,
        2: captions,
        3: lambda: recipe.finetune(finetune_cases()),
        4: lambda: recipe.inpaint(recipe.images(sources)),
        5: lambda: recipe.generate_pairs(inputs(tree)),
        6: lambda: recipe.segment_results("reposed", ("rgba",)),
        7: lambda: recipe.segment_results("reposed", ("rgb", "mask")),
        8: lambda: recipe.paste("reposed"),
        9: lambda: recipe.refine(source_captions(tree, request.captions, session.profile)),
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
