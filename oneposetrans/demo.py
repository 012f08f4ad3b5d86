"""The Gradio demo: the whole in-the-wild flow for one photo, step by step, in the browser.

Upload -> segment (GroundingDINO, or clicks as SAM point prompts) -> caption (typed, or Gemini /
local VLM) -> fine-tune -> target poses (upload JSON keypoints, pose maps or photos; several at
once) -> repose -> optional refine -> background (LaMa inpainting or an uploaded picture) ->
composite. Every visitor gets a results tree of their own under the work folder, made at their
first write, and every step writes its own files there, so no step overwrites another step's
inputs (the published demo overwrote the source mask, README *Profiles*). Models are loaded once
per process. Without ``--workdir`` the visitors' folders and Gradio's copies of uploads live in
a temporary folder of the process, removed when the demo stops (Ctrl-C or SIGTERM); a visitor's
folder goes when Gradio forgets their session.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from oneposetrans.caption import CaptionStore, conform
from oneposetrans.errors import BadInputError, CaseFailures, OnePoseTransError
from oneposetrans.finetune import FinetuneCase
from oneposetrans.generate import GenerateCase
from oneposetrans.image_io import load_image, save_image
from oneposetrans.pose import PoseMaps
from oneposetrans.recipe import Recipe
from oneposetrans.results import ResultsTree, pair_name, stem
from oneposetrans.segment import Segmentation, SegmentOutputs
from oneposetrans.session import Session
from oneposetrans.settings import FinetuneSettings, GenerationSettings, RefineSettings

logger = logging.getLogger(__name__)

SOURCE_NAME = "source"
MAX_FILE_SIZE = "25mb"


@dataclass
class DemoConfig:
    models: Path
    workdir: Path | None
    """Where the visitors' results trees go; None: :func:`launch`'s temporary folder."""
    device: str = "auto"
    dtype: str = "auto"
    profile: str = "default"
    resolution: int = GenerationSettings.resolution
    finetune_resolution: int = FinetuneSettings.resolution
    finetune_steps: int = FinetuneSettings.steps
    denoise_steps: int = GenerationSettings.steps
    smoke: bool = False
    """The models are the tiny kit's random weights: the page says its pictures are noise."""
    compile: bool = False
    """The generator's transformer blocks through ``torch.compile`` (``--compile``)."""


@dataclass
class Visitor:
    """One browser session's working state: its own results tree and its clicks."""

    tree: ResultsTree
    """Planned (nothing on disk) until :meth:`writable` is first called."""
    clicks: list[tuple[float, float, int]] = field(default_factory=list)
    caption: str = ""
    targets: list[str] = field(default_factory=list)

    def writable(self) -> ResultsTree:
        """The tree, made on disk now if it was only planned: a visitor who never gets as far as
        a file leaves no folder behind."""
        if not self.tree.create:
            self.tree = ResultsTree(self.tree.root)
        return self.tree


class DemoSteps:
    """The demo's steps as plain functions of (visitor, inputs), testable without a browser.

    Each step is the recipe's step (:class:`~oneposetrans.recipe.Recipe`) on the visitor's tree,
    so the page does what the ``repose`` command does in each profile. A step asked for again
    is redone (the visitor changed its input).
    """

    def __init__(self, config: DemoConfig, forget_visitors: bool = False):
        """``forget_visitors``: a visitor's folder is deleted when their session ends (the work
        folder is the process's temporary one, not one the user asked to keep)."""
        self.config = config
        self.forget_visitors = forget_visitors
        # Models are shared by all visitors, loaded on first use; one visitor's step runs at a time.
        self._lock = threading.Lock()
        self._session = None

    @property
    def session(self):
        if self._session is None:
            self._session = Session(
                self.config.models, self.config.device, self.config.dtype, self.config.profile, compile=self.config.compile
            )
        return self._session

    def new_visitor(self) -> Visitor:
        return Visitor(ResultsTree(self.config.workdir / uuid.uuid4().hex, create=False))

    def end_visit(self, visitor: Visitor | None) -> None:
        """Gradio's callback when it forgets a session's state."""
        if visitor is not None and self.forget_visitors:
            shutil.rmtree(visitor.tree.root, ignore_errors=True)

    def _recipe(self, visitor: Visitor, **settings):
        config = self.config
        return Recipe(
            visitor.tree,
            self.session,
            GenerationSettings(resolution=config.resolution, steps=config.denoise_steps),
            FinetuneSettings(resolution=config.finetune_resolution, steps=config.finetune_steps),
            RefineSettings(resolution=config.resolution, steps=config.denoise_steps),
            echo=lambda _: None,
            progress=False,
            overwrite=True,
            shown_as={SOURCE_NAME: "the uploaded photo"},
        )

    def _run(self, visitor: Visitor, step: str, *arguments):
        """``Recipe.<step>(*arguments)`` on the visitor's tree; a failed case becomes its reason."""
        visitor.writable()
        with self._lock:
            try:
                return getattr(self._recipe(visitor), step)(*arguments)
            except CaseFailures as error:
                raise BadInputError("; ".join(error.reasons)) from None

    # -- steps --------------------------------------------------------------------------------

    def upload(self, visitor: Visitor, path: str | None) -> Image.Image:
        if not path:
            raise BadInputError("upload a photo first")
        image = load_image(path, "RGB")
        save_image(image, visitor.writable().file("images", f"{SOURCE_NAME}.png"))
        visitor.clicks.clear()
        return image

    def _source(self, visitor: Visitor) -> Image.Image:
        path = visitor.tree.file("images", f"{SOURCE_NAME}.png")
        if not path.exists():
            raise BadInputError("upload a photo first")
        return load_image(path, "RGB")

    def segment(self, visitor: Visitor, use_clicks: bool) -> Image.Image:
        """The person mask by GroundingDINO (step 1), or by SAM from the clicks; writes
        images_rgba and images_mask."""
        image = self._source(visitor)
        if use_clicks:
            if not visitor.clicks:
                raise BadInputError("click on the person in the photo first (or segment automatically)")
            with self._lock:
                mask = self.session.segmenter.segment_points(image, [(x, y) for x, y, _ in visitor.clicks], [label for *_, label in visitor.clicks])
            found = Segmentation(mask, (0.0, 0.0, float(image.width), float(image.height)), 1.0, 1)
            SegmentOutputs.for_mode("dataset", visitor.tree.folder("images_mask"), visitor.tree.folder("images_rgba"), None).write(
                image, found, SOURCE_NAME
            )
        else:
            self._run(visitor, "segment_sources", [SOURCE_NAME])
        person = np.asarray(load_image(visitor.tree.file("images_rgba", f"{SOURCE_NAME}.png"), "RGBA"))[..., 3] > 127
        overlay = np.asarray(image).copy()
        overlay[person] = (overlay[person] * 0.5 + np.array([255, 64, 64]) * 0.5).astype(np.uint8)
        return Image.fromarray(overlay)

    def click(self, visitor: Visitor, x: float, y: float, positive: bool) -> str:
        visitor.clicks.append((x, y, 1 if positive else 0))
        return f"{len(visitor.clicks)} click(s): " + ", ".join(f"({x:.0f},{y:.0f}){'+' if l else '-'}" for x, y, l in visitor.clicks)

    def auto_caption(self, visitor: Visitor) -> str:
        """Step 2 by the session's captioner; the visitor may edit the caption before fine-tuning."""
        self._source(visitor)
        self._run(visitor, "caption", [visitor.tree.file("images", f"{SOURCE_NAME}.png")])
        return CaptionStore(visitor.tree).get(SOURCE_NAME)

    def finetune(self, visitor: Visitor, caption: str) -> str:
        fitted = conform(caption or "")
        if fitted is None:
            raise BadInputError('the caption must read "A man/woman with face, <clothes and accessories>"')
        visitor.caption = fitted
        self._source(visitor)
        self._run(visitor, "finetune", [FinetuneCase(SOURCE_NAME, [visitor.tree.file("images", f"{SOURCE_NAME}.png")], fitted)])
        return f"LoRA trained for: {fitted}"

    def _pose_maps(self, visitor: Visitor):
        return PoseMaps(visitor.tree, self.session.profile)

    def poses(self, visitor: Visitor, files: list[str] | None) -> list[Image.Image]:
        """Target poses from keypoints JSON, rendered maps or photos (OpenPose), several at once."""
        if not files:
            raise BadInputError("upload one or more target poses (OpenPose JSON, pose maps or photos)")
        targets = {stem(Path(path).name): Path(path) for path in files}
        self._run(visitor, "poses", targets)
        visitor.targets = list(targets)
        cache = self._pose_maps(visitor)
        return [load_image(cache.path(name), "RGB") for name in targets]

    def repose(self, visitor: Visitor) -> tuple[list[Image.Image], str]:
        """The RGBA results (step 5), and what the identity lacked (e.g. no face found in the photo)."""
        if not visitor.tree.file("lora", f"{SOURCE_NAME}.safetensors").exists():
            raise BadInputError("fine-tune first")
        if not visitor.targets:
            raise BadInputError("give the target poses first")
        self._source(visitor)
        cache = self._pose_maps(visitor)
        pose_of = lambda target: load_image(cache.path(target), "RGB")  # noqa: E731
        done = self._run(visitor, "generate", [GenerateCase(SOURCE_NAME, visitor.targets, visitor.caption)], pose_of)
        images = [Image.open(visitor.tree.file("reposed_result", pair_name(SOURCE_NAME, t))) for t in visitor.targets]
        return images, "; ".join(done.notes) or f"{len(images)} poses rendered"

    def _results(self, visitor: Visitor, kind: str, missing: str) -> list[str]:
        names = [pair_name(SOURCE_NAME, t) for t in visitor.targets]
        if not names or not all(visitor.tree.file(f"{kind}_result", n).exists() for n in names):
            raise BadInputError(missing)
        return names

    def refine(self, visitor: Visitor) -> list[Image.Image]:
        names = self._results(visitor, "reposed", "repose first")
        if self.session.profile.refine_input == "published":
            # The published refining pass reads the results' RGBA of step 6.
            self._run(visitor, "segment_results", "reposed", ("rgba",), names)
        self._run(visitor, "refine", {SOURCE_NAME: visitor.caption}, names)
        return [Image.open(visitor.tree.file("refined_result", n)) for n in names]

    def background(self, visitor: Visitor, uploaded: str | None) -> Image.Image:
        """The source with the person removed (step 4, LaMa), or an uploaded background."""
        target = visitor.tree.file("images_inpainted", f"{SOURCE_NAME}.png")
        if uploaded:
            background = load_image(uploaded, "RGB")  # checked before the visitor's folder is made
            visitor.writable()
            save_image(background, target)
        else:
            self._source(visitor)
            if not visitor.tree.file("images_mask", f"{SOURCE_NAME}.png").exists():
                raise BadInputError("segment the person first (the inpainting needs the mask)")
            self._run(visitor, "inpaint", [visitor.tree.file("images", f"{SOURCE_NAME}.png")])
        return load_image(target, "RGB")

    def composite(self, visitor: Visitor, use_refined: bool) -> list[Image.Image]:
        """The results on the background (steps 7-8, or 10-11 for the refined results)."""
        kind = "refined" if use_refined else "reposed"
        if not visitor.tree.file("images_inpainted", f"{SOURCE_NAME}.png").exists():
            raise BadInputError("make the background first (inpaint or upload)")
        names = self._results(visitor, kind, f"{'refine' if use_refined else 'repose'} first")
        self._run(visitor, "segment_results", kind, ("rgb", "mask"), names)
        self._run(visitor, "paste", kind, names)
        return [load_image(visitor.tree.file(f"{kind}_final_result", n), "RGB") for n in names]


# An absolute path: a slash-separated run of names, each free of spaces, quotes and the
# punctuation messages put around paths.
_SERVER_PATH = re.compile(r"(?<![\w.~])/(?:[^\s/'\"():;,]+/)*([^\s/'\"():;,]+)")


def without_server_paths(message: str) -> str:
    """``message`` with every absolute path cut to its last name: a visitor sees the file they
    uploaded by its name, never where the server keeps it."""
    return _SERVER_PATH.sub(r"\1", message)


def page_errors(function):
    """A bad file, a missing model or a photo without a person or face becomes a message in the
    page (gr.Error), without the server's paths, instead of a traceback in the server log; the
    server's console gets the whole line."""
    import gradio as gr

    @functools.wraps(function)
    def wrapper(*arguments, **keywords):
        try:
            return function(*arguments, **keywords)
        except OnePoseTransError as error:
            logger.warning("demo: %s", error)
            raise gr.Error(without_server_paths(str(error)), print_exception=False) from None

    return wrapper


SMOKE_NOTICE = (
    "**Smoke run (`--smoke`)**: every model here is a tiny model with random weights. The pictures are "
    "noise; the page proves that every step runs, not picture quality. Start it without `--smoke`, with "
    "the real models in `--models`, for real results."
)


def build_demo(steps: DemoSteps):
    """The page: one column per step, each with its button, its output and a download."""
    import gradio as gr

    guarded = page_errors
    def visitor_of(state: Visitor | None) -> Visitor:
        return state if state is not None else steps.new_visitor()

    with gr.Blocks(title="OnePoseTrans") as demo:
        gr.Markdown("# OnePoseTrans: one photo, any pose\nRun the steps in order. Each result can be downloaded.")
        if steps.config.smoke:
            gr.Markdown(SMOKE_NOTICE, elem_id="smoke-notice")
        state = gr.State(None, delete_callback=steps.end_visit)
        with gr.Row():
            with gr.Column():
                gr.Markdown("### 1. Photo and person")
                # Files, not gr.Image: gr.Image opens an upload with PIL before any handler runs,
                # so a bad file would be a bare "Error" badge instead of our message.
                photo = gr.File(label="photo", file_types=["image"], type="filepath", elem_id="photo")
                photo_view = gr.Image(label="click on the person to segment from clicks", elem_id="photo-view", interactive=False, format="png")
                positive = gr.Checkbox(value=True, label="clicks mark the person (untick to mark background)")
                clicks = gr.Textbox(label="clicks", interactive=False, elem_id="clicks")
                with gr.Row():
                    segment_auto = gr.Button("Segment automatically", elem_id="segment")
                    segment_clicks = gr.Button("Segment from clicks", elem_id="segment-clicks")
                mask_view = gr.Image(label="person mask", elem_id="mask", interactive=False, format="png")
            with gr.Column():
                gr.Markdown("### 2. Caption and fine-tuning")
                caption = gr.Textbox(label='caption: "A man/woman with face, ..."', elem_id="caption")
                caption_button = gr.Button("Caption automatically (Gemini key or local VLM)", elem_id="auto-caption")
                finetune_button = gr.Button("Fine-tune", elem_id="finetune")
                finetune_status = gr.Textbox(label="fine-tuning", interactive=False, elem_id="finetune-status")
            with gr.Column():
                gr.Markdown("### 3. Target poses and reposing")
                pose_files = gr.File(label="target poses (OpenPose JSON, pose maps or photos)", file_count="multiple", elem_id="poses", type="filepath")
                poses_button = gr.Button("Load poses", elem_id="load-poses")
                pose_gallery = gr.Gallery(label="poses", elem_id="pose-gallery", format="png")
                repose_button = gr.Button("Repose", elem_id="repose", variant="primary")
                results = gr.Gallery(label="reposed (RGBA)", elem_id="results", format="png")
                repose_notes = gr.Textbox(label="notes", interactive=False, elem_id="repose-notes")
                refine_button = gr.Button("Refine (optional)", elem_id="refine")
                refined = gr.Gallery(label="refined", elem_id="refined", format="png")
            with gr.Column():
                gr.Markdown("### 4. Background and composite")
                background_upload = gr.File(label="your own background (optional)", file_types=["image"], type="filepath", elem_id="background-upload")
                background_button = gr.Button("Make background", elem_id="background")
                background = gr.Image(label="background", elem_id="background-view", interactive=False, format="png")
                use_refined = gr.Checkbox(value=False, label="composite the refined results")
                composite_button = gr.Button("Composite", elem_id="composite", variant="primary")
                finals = gr.Gallery(label="composite", elem_id="final", format="png")

        def on_upload(state, path):
            visitor = visitor_of(state)
            shown = steps.upload(visitor, path) if path else None
            return visitor, "", shown

        def on_select(state, positive_click, event: gr.SelectData):
            visitor = visitor_of(state)
            x, y = event.index
            return visitor, steps.click(visitor, x, y, positive_click)

        # Gradio injects the click by the parameter's annotation, which must be the class itself
        # (this module's annotations are strings).
        on_select.__annotations__["event"] = gr.SelectData

        def handler(method, *fixed):
            """Gradio callback for ``steps.<method>(visitor, *fixed, *inputs)``, returning (state, output)."""

            def call(state, *inputs, progress=gr.Progress()):
                progress(0, desc=f"{method.replace('_', ' ')}: running")
                visitor = visitor_of(state)
                output = getattr(steps, method)(visitor, *fixed, *inputs)
                return (visitor, *output) if isinstance(output, tuple) else (visitor, output)

            return guarded(call)

        photo.upload(guarded(on_upload), [state, photo], [state, clicks, photo_view])
        photo_view.select(guarded(on_select), [state, positive], [state, clicks])
        segment_auto.click(handler("segment", False), [state], [state, mask_view])
        segment_clicks.click(handler("segment", True), [state], [state, mask_view])
        caption_button.click(handler("auto_caption"), [state], [state, caption])
        finetune_button.click(handler("finetune"), [state, caption], [state, finetune_status])
        poses_button.click(handler("poses"), [state, pose_files], [state, pose_gallery])
        repose_button.click(handler("repose"), [state], [state, results, repose_notes])
        refine_button.click(handler("refine"), [state], [state, refined])
        background_button.click(handler("background"), [state, background_upload], [state, background])
        composite_button.click(handler("composite"), [state, use_refined], [state, finals])
    return demo


def launch(config: DemoConfig, host: str = "127.0.0.1", port: int = 7860, share: bool = False) -> None:
    """Serve the demo until Ctrl-C or SIGTERM. ``config.workdir`` None: the visitors' folders go
    in the process's temporary folder (with Gradio's copies of uploads and outputs), removed when
    the demo stops; a folder the user named is kept."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    scratch = Path(tempfile.mkdtemp(prefix="oneposetrans-demo-"))
    # Gradio reads this when each component is made: its cache then lives and dies with us.
    os.environ["GRADIO_TEMP_DIR"] = str(scratch / "gradio")
    keep = config.workdir is not None
    steps = DemoSteps(config if keep else replace(config, workdir=scratch / "visitors"), forget_visitors=not keep)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    demo = None
    try:
        demo = build_demo(steps)
        demo.queue(default_concurrency_limit=1).launch(
            server_name=host, server_port=port, share=share, max_file_size=MAX_FILE_SIZE,
            allowed_paths=[str(steps.config.workdir)], quiet=True, prevent_thread_lock=True,
        )
        print(f"demo at {demo.local_url}", flush=True)
        print(f"public link: {demo.share_url}" if share else "(no public link: start with --share for a gradio.live one)", flush=True)
        print(
            f"visitors' folders in {steps.config.workdir}" + ("" if keep else " (removed when the demo stops; --workdir DIR keeps them)"),
            flush=True,
        )
        demo.block_thread()  # returns on Ctrl-C, and on SIGTERM through _interrupt
    finally:
        if demo is not None:
            demo.close()
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(scratch, ignore_errors=True)
        print("demo stopped", flush=True)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
