"""The ``repose`` command, the main job: one photo of a person and target poses in, the person
in those poses out.

A list of the recipe's steps (:class:`~oneposetrans.recipe.Recipe`) over one source and its
target poses, in one results tree. Every step skips the work whose output file already exists,
so a killed run resumes where it stopped. Steps left out on purpose (``--no-composite``, no
``--refine``) are listed as skipped with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image
from skimage import data

from oneposetrans.errors import BadInputError, CaseFailures, OnePoseTransError
from oneposetrans.finetune import FinetuneCase
from oneposetrans.generate import GenerateCase
from oneposetrans.image_io import load_image, save_image
from oneposetrans.pose import BUNDLED_POSES, PoseMaps, needs_detector
from oneposetrans.recipe import Recipe
from oneposetrans.report import contact_sheet
from oneposetrans.results import ResultsTree, check_writable_folder, is_done, pair_name, stem
from oneposetrans.settings import FinetuneSettings, GenerationSettings, RefineSettings
from oneposetrans.stages import Stage, StageReport

BUNDLED_SOURCE_NAME = "astronaut"
BUNDLED_CAPTION = (
    "A woman with face, orange spacesuit with mission patches, white collar ring, "
    "short brown hair, smile"
)


@dataclass
class ReposeRequest:
    """What to do; how (models, device, profile) is the :class:`~oneposetrans.session.Session`'s."""

    out: Path
    source: Path | None = None
    poses: list[Path] = field(default_factory=list)
    caption: str | None = None
    refine: bool = False
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    identitynet: bool = False
    composite: bool = True
    """Segment the source, inpaint its background and paste the results onto it."""
    inpainter: str = "lama"


@dataclass
class StageStatus:
    stage: str
    status: str
    detail: str = ""


@dataclass
class CheckedInputs:
    """What :func:`check_inputs` found: the target poses that can serve, and one line per other."""

    poses: list[Path]
    rejected: list[tuple[Path, str]]


def check_inputs(request: ReposeRequest) -> CheckedInputs:
    """Everything that can be checked without a model, before anything is created: the results
    folder can be written, the source reads as an image and each target pose parses. A bad target
    pose is set aside with its reason while the others go on; if none is left, the run stops here.
    The models are checked next (:func:`require_models`), once the models folder exists:
    ``--smoke`` builds it after these checks."""
    check_writable_folder(request.out)
    if request.source is not None:
        load_image(request.source, "RGB")
    poses, rejected, names = [], [], set()
    for pose_path in request.poses or list(BUNDLED_POSES):
        try:
            if stem(pose_path) in names:
                raise BadInputError(f"{pose_path}: a second target pose named {stem(pose_path)!r}")
            needs_detector(pose_path)
            names.add(stem(pose_path))
            poses.append(Path(pose_path))
        except BadInputError as error:
            rejected.append((Path(pose_path), str(error)))
    if not poses:
        raise BadInputError("no usable target pose: " + "; ".join(reason for _, reason in rejected))
    return CheckedInputs(poses, rejected)


def source_name(request: ReposeRequest) -> str:
    return stem(request.source) if request.source else BUNDLED_SOURCE_NAME


def _recipe(request: ReposeRequest, session, tree: ResultsTree, echo: Callable[[str], None]) -> Recipe:
    return Recipe(
        tree, session, request.settings, request.finetune, RefineSettings(resolution=request.settings.resolution),
        echo=lambda line: echo(f"  {line}"), shown_as={source_name(request): str(request.source)} if request.source else None,
    )


def _stages(request: ReposeRequest, recipe: Recipe, checked: CheckedInputs) -> list[Stage]:
    """The stages this run uses. The source is always segmented: the image prompt and the face
    read the person on black."""
    stages = [
        recipe.segment_stage(), recipe.caption_stage(), recipe.finetune_stage(),
        recipe.pose_stage({stem(path): path for path in checked.poses}), recipe.generate_stage(None),
    ]
    if request.composite:
        stages += [recipe.inpaint_stage(), recipe.results_stage("reposed", ("rgb", "mask")), recipe.paste_stage("reposed")]
    if request.refine:
        stages.append(recipe.refine_stage({}))
    return stages


def require_models(request: ReposeRequest, session, checked: CheckedInputs) -> None:
    """Every model the run needs, from its stages, in one check before anything is written."""
    recipe = _recipe(request, session, ResultsTree(request.out, create=False), print)
    recipe.require(_stages(request, recipe, checked))


def run_repose(
    request: ReposeRequest, session, echo: Callable[[str], None] = print, checked: CheckedInputs | None = None
) -> list[StageStatus]:
    """Run every step for one source and all its target poses; return the stage report.

    ``checked`` is :func:`check_inputs`'s answer, with its models checked, when the caller has
    it already; otherwise both checks run first. Raises :class:`CaseFailures` at the end if some
    targets failed; the others are complete. An error raised on the way carries the report of
    the steps so far as ``error.report``.
    """
    if checked is None:
        checked = check_inputs(request)
        require_models(request, session, checked)
    report: list[StageStatus] = []
    try:
        return _run_repose(request, session, echo, report, checked)
    except OnePoseTransError as error:
        error.report = report
        raise


def _step(report: list[StageStatus], stage: str, run: Callable[[], StageReport], describe: Callable[[StageReport], str]) -> StageStatus:
    """Run one step of the recipe and add its line to the report."""
    try:
        done = run()
    except CaseFailures as error:
        status = StageStatus(stage, "failed", str(error))
    else:
        status = StageStatus(stage, "done" if done.done else "resumed", describe(done))
    report.append(status)
    return status


def _run_repose(
    request: ReposeRequest, session, echo: Callable[[str], None], report: list[StageStatus], checked: CheckedInputs
) -> list[StageStatus]:
    tree = ResultsTree(request.out)
    recipe = _recipe(request, session, tree, echo)
    name = source_name(request)
    log = tree.log("repose")
    report.append(_ingest_source(request, tree, name))
    for pose_path, reason in checked.rejected:
        log.fail(pair_name(name, stem(pose_path)), reason)
        echo(f"  failed: {reason}")
    rgba = tree.file("images_rgba", f"{name}.png")
    person_found = _step(report, "segment", lambda: recipe.segment_sources([name]), lambda done: str(rgba)).status != "failed"
    caption, origin, resumed = recipe.caption_of(name, request.caption, None if request.source else BUNDLED_CAPTION, str(request.source))
    report.append(StageStatus("caption", "resumed" if resumed else "done", origin))
    lora = tree.file("lora", f"{name}.safetensors")
    done = recipe.finetune([FinetuneCase(name, [tree.file("images", f"{name}.png")], caption)])
    report.append(StageStatus("finetune", "done" if done.done else "resumed", str(lora)))

    # The target poses: one that cannot be had is left out (its line is above), the others go on.
    files = {stem(path): path for path in checked.poses}
    total = len(files) + len(checked.rejected)
    maps = PoseMaps(tree, session.profile)
    cached = {target for target in files if is_done(maps.path(target))}
    try:
        recipe.poses(files, name)
    except CaseFailures:
        pass
    ready = [target for target in files if is_done(maps.path(target))]
    rendered = len(set(ready) - cached)
    report.append(StageStatus("pose", "done" if rendered else "resumed", f"{len(ready)} of {total} target poses ready, {rendered} rendered now"))
    pose_of = lambda target: load_image(maps.path(target), "RGB")  # noqa: E731

    def describe_generate(done: StageReport) -> str:
        detail = f"{done.done} generated, {done.skipped} already present"
        if done.done:
            detail += f"; {done.conditioning}" + "".join(f"; {note}" for note in done.notes)
        return detail

    _step(report, "repose", lambda: recipe.generate([GenerateCase(name, ready, caption)], pose_of, log="repose"), describe_generate)
    results = [pair_name(name, target) for target in ready]
    refines_rgba = request.refine and session.profile.refine_input == "published"
    if (request.composite and person_found) or refines_rgba:
        # The published refining pass reads the results' RGBA of step 6 (the generated colours, SAM's alpha).
        _segment_results(recipe, "reposed", ("rgba", "rgb", "mask") if refines_rgba else ("rgb", "mask"), results)
    if not request.composite:
        report += [StageStatus("inpaint", "skipped", "--no-composite"), StageStatus("paste", "skipped", "--no-composite")]
    elif not person_found:
        reason = "no person mask of the source"
        report += [StageStatus("inpaint", "skipped", reason), StageStatus("paste", "skipped", reason)]
    else:
        background = tree.file("images_inpainted", f"{name}.png")
        _step(report, "inpaint", lambda: recipe.inpaint(recipe.images([name])), lambda done: f"{session.inpainter_kind}: {background}")
        _paste(report, "paste", recipe, "reposed", results)
    if request.refine:
        _step(
            report, "refine", lambda: recipe.refine({name: caption}, results),
            lambda done: f"{done.done} refined, {done.skipped} already present",
        )
        if request.composite and person_found:
            _segment_results(recipe, "refined", ("rgb", "mask"), results)
            _paste(report, "paste refined", recipe, "refined", results)

    sheet = tree.root / "contact_sheet.png"
    # Redrawn when a step wrote something new, so a finished run resumes without writing a file.
    if any(status.status == "done" for status in report) or not is_done(sheet):
        _contact_sheet(tree, name, maps, ready, request.composite, sheet)
    report.append(StageStatus("contact sheet", "done", str(sheet)))
    failed = [s for s in report if s.status == "failed"]
    unposed = len(files) - len(ready)
    lost = len(log.failed) + unposed
    if lost:
        where = f"; pose: {unposed} failed (reasons in {tree.log('pose').path})" if unposed else ""
        failed.append(StageStatus("repose", "failed", f"{lost} of {total} targets failed; {log.summary()}{where}"))
    if failed:
        raise CaseFailures("; ".join(f"{s.stage}: {s.detail}" for s in failed))
    return report


def _ingest_source(request: ReposeRequest, tree: ResultsTree, name: str) -> StageStatus:
    target = tree.file("images", f"{name}.png")
    if is_done(target):
        return StageStatus("source", "resumed", str(target))
    image = load_image(request.source, "RGB") if request.source else Image.fromarray(data.astronaut())
    save_image(image, target)
    return StageStatus("source", "done", str(target))


def _segment_results(recipe: Recipe, kind: str, writes: tuple[str, ...], results: list[str]) -> None:
    """Masks of the results for the paste. One that cannot be segmented is not pasted; its reason
    is in the segment log and on the screen already, and the paste's line counts it."""
    try:
        recipe.segment_results(kind, writes, results)
    except CaseFailures:
        pass


def _paste(report: list[StageStatus], label: str, recipe: Recipe, kind: str, results: list[str]) -> None:
    tree = recipe.tree
    # Only results with their mask (segmented, or from their own alpha) can be pasted.
    pastable = [result for result in results if is_done(tree.file(f"{kind}_mask", result))]
    lost = [result for result in results if result not in pastable and is_done(tree.file(f"{kind}_result", result))]
    status = _step(
        report, label, lambda: recipe.paste(kind, pastable),
        lambda done: f"{done.done} composited onto the inpainted background in {kind}_final_result",
    )
    if lost:
        status.status = "failed"
        status.detail = f"{len(lost)} without a person ({tree.log('segment').path}); {status.detail}"


def _contact_sheet(tree: ResultsTree, name: str, maps: PoseMaps, targets: list[str], composite: bool, sheet: Path) -> None:
    source_image = load_image(tree.file("images", f"{name}.png"))
    rows = []
    for target in targets:
        result = tree.file("reposed_result", pair_name(name, target))
        row = [source_image, load_image(maps.path(target), "RGB"), load_image(result, "RGBA") if is_done(result) else None]
        if composite:
            final = tree.file("reposed_final_result", result.name)
            row.append(load_image(final, "RGB") if is_done(final) else None)
        rows.append(tuple(row))
    contact_sheet(rows, sheet, header=("source", "pose", "result", "composite") if composite else ("source", "pose", "result"))


def format_report(report: list[StageStatus]) -> str:
    width = max(len(s.stage) for s in report)
    return "\n".join(f"  {s.stage:<{width}}  {s.status:<8} {s.detail}" for s in report)
