"""The Gradio demo: the whole in-the-wild flow for one photo, step by step, in the browser.

Upload -> segment (GroundingDINO, or clicks as SAM point prompts) -> caption (typed, or Gemini /
local VLM) -> fine-tune -> target poses (upload JSON keypoints, pose maps or photos; several at
once) -> repose -> optional refine -> background (LaMa inpainting or an uploaded picture) ->
composite. Every visitor gets a results tree of their own under the work folder, and every step
writes its own files there, so no step overwrites another step's inputs (the published demo
overwrote the source mask, README *Profiles*). Models are loaded once per process.
"""

from __future__ import annotations

import functools
import os
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from oneposetrans.errors import BadInputError, OnePoseTransError
from oneposetrans.results import ResultsTree, pair_name, pose_map_name, stem

SOURCE_NAME = "source"
MAX_FILE_SIZE = "25mb"


@dataclass
class DemoConfig:
    models: Path
    workdir: Path
    device: str = "auto"
    dtype: str = "auto"
    profile: str = "default"
    resolution: int = 1024
    finetune_resolution: int = 512
    finetune_steps: int = 60
    denoise_steps: int = 25
    smoke: bool = False
    """The models are the tiny kit's random weights: the page says its pictures are noise."""


@dataclass
class Visitor:
    """One browser session's working state: its own results tree and its clicks."""

    tree: ResultsTree
    clicks: list[tuple[float, float, int]] = field(default_factory=list)
    caption: str = ""
    targets: list[str] = field(default_factory=list)


class DemoSteps:
    """The demo's steps as plain functions of (visitor, inputs), testable without a browser."""

    def __init__(self, config: DemoConfig):
        self.config = config
        self._lock = threading.Lock()
        # Heavy models are shared by all visitors and loaded on first use.
        self.segmenter = functools.cache(self._load_segmenter)
        self.reposer = functools.cache(self._load_reposer)
        self.inpainter = functools.cache(self._load_inpainter)

    def _load_segmenter(self):
        from oneposetrans.segment import PersonSegmenter

        return PersonSegmenter(self.config.models, self.config.device, self.config.profile)

    def _load_reposer(self):
        from oneposetrans.repose import Reposer

        return Reposer(self.config.models, self.config.device, self.config.dtype, self.config.profile)

    def _load_inpainter(self):
        from oneposetrans.inpaint import make_inpainter

        return make_inpainter("lama", self.config.models, self.config.device, self.config.dtype, self.config.profile)

    def new_visitor(self) -> Visitor:
        self.config.workdir.mkdir(parents=True, exist_ok=True)
        return Visitor(ResultsTree(self.config.workdir / uuid.uuid4().hex))

    # -- steps --------------------------------------------------------------------------------

    def upload(self, visitor: Visitor, path: str | None) -> Image.Image:
        from oneposetrans.image_io import load_image, save_image

        if not path:
            raise BadInputError("upload a photo first")
        image = load_image(path, "RGB")
        save_image(image, visitor.tree.file("images", f"{SOURCE_NAME}.png"))
        visitor.clicks.clear()
        return image

    def _source(self, visitor: Visitor) -> Image.Image:
        from oneposetrans.image_io import load_image

        path = visitor.tree.file("images", f"{SOURCE_NAME}.png")
        if not path.exists():
            raise BadInputError("upload a photo first")
        return load_image(path, "RGB")

    def segment(self, visitor: Visitor, use_clicks: bool) -> Image.Image:
        """The person mask by GroundingDINO, or by SAM from the clicks; writes images_rgba and images_mask."""
        from oneposetrans.segment import Segmentation, SegmentOutputs

        image = self._source(visitor)
        with self._lock:
            if use_clicks:
                if not visitor.clicks:
                    raise BadInputError("click on the person in the photo first (or segment automatically)")
                mask = self.segmenter().segment_points(image, [(x, y) for x, y, _ in visitor.clicks], [label for *_, label in visitor.clicks])
                found = Segmentation(mask, (0.0, 0.0, float(image.width), float(image.height)), 1.0, 1)
            else:
                found = self.segmenter().segment(image, name="the uploaded photo")
        SegmentOutputs.for_mode("dataset", visitor.tree.folder("images_mask"), visitor.tree.folder("images_rgba"), None).write(
            image, found, SOURCE_NAME
        )
        overlay = np.asarray(image).copy()
        overlay[found.mask > 127] = (overlay[found.mask > 127] * 0.5 + np.array([255, 64, 64]) * 0.5).astype(np.uint8)
        return Image.fromarray(overlay)

    def click(self, visitor: Visitor, x: float, y: float, positive: bool) -> str:
        visitor.clicks.append((x, y, 1 if positive else 0))
        return f"{len(visitor.clicks)} click(s): " + ", ".join(f"({x:.0f},{y:.0f}){'+' if l else '-'}" for x, y, l in visitor.clicks)

    def auto_caption(self, visitor: Visitor) -> str:
        from oneposetrans.caption import automatic_captioner, caption_with_retries, conform

        image = self._source(visitor)
        captioner = automatic_captioner(self.config.models, self.config.device)
        raw = caption_with_retries(captioner, image)
        caption = conform(raw)
        if caption is None:
            raise BadInputError(f"the caption from {captioner.model} does not fit 'A man/woman with face, ...' ({raw[:80]!r}); type one")
        return caption

    def finetune(self, visitor: Visitor, caption: str) -> str:
        from oneposetrans.caption import conform
        from oneposetrans.finetune import FinetuneCase, FinetuneSettings, run_finetune

        fitted = conform(caption or "")
        if fitted is None:
            raise BadInputError('the caption must read "A man/woman with face, <clothes and accessories>"')
        visitor.caption = fitted
        self._source(visitor)
        settings = FinetuneSettings(profile=self.config.profile, resolution=self.config.finetune_resolution, steps=self.config.finetune_steps)
        with self._lock:
            run_finetune(
                [FinetuneCase(SOURCE_NAME, [visitor.tree.file("images", f"{SOURCE_NAME}.png")], fitted)],
                visitor.tree, self.config.models, settings, device=self.config.device, overwrite=True, echo=lambda _: None,
            )
        return f"LoRA trained for: {fitted}"

    def poses(self, visitor: Visitor, files: list[str] | None) -> list[Image.Image]:
        """Target poses from keypoints JSON, rendered maps or photos (OpenPose), several at once."""
        from oneposetrans.image_io import save_image
        from oneposetrans.pose import PoseExtractor, load_pose_map

        if not files:
            raise BadInputError("upload one or more target poses (OpenPose JSON, pose maps or photos)")
        extractor = functools.cache(lambda: PoseExtractor(self.config.models, self.config.device))
        maps, names = [], []
        for path in files:
            name = stem(Path(path).name)
            pose_map, _ = load_pose_map(path, self.config.resolution, extractor, self.config.profile)
            save_image(pose_map, visitor.tree.file("poses", pose_map_name(name, self.config.profile)))
            maps.append(pose_map)
            names.append(name)
        visitor.targets = names
        return maps

    def repose(self, visitor: Visitor) -> tuple[list[Image.Image], str]:
        """The RGBA results, and what the identity lacked (e.g. no face found in the photo)."""
        from oneposetrans.image_io import load_image, save_image
        from oneposetrans.repose import GenerationSettings, load_identity_image

        lora = visitor.tree.file("lora", f"{SOURCE_NAME}.safetensors")
        if not lora.exists():
            raise BadInputError("fine-tune first")
        if not visitor.targets:
            raise BadInputError("give the target poses first")
        maps = [load_image(visitor.tree.file("poses", pose_map_name(t, self.config.profile)), "RGB") for t in visitor.targets]
        settings = GenerationSettings(resolution=self.config.resolution, steps=self.config.denoise_steps)
        self._source(visitor)
        identity, missing_mask = load_identity_image(visitor.tree, SOURCE_NAME, self.config.profile)
        with self._lock:
            images, notes = self.reposer().generate(visitor.caption, maps, settings, lora=lora, source=identity)
        notes = [missing_mask, *notes] if missing_mask else notes
        for target, image in zip(visitor.targets, images):
            save_image(image, visitor.tree.file("reposed_result", pair_name(SOURCE_NAME, target)))
        return images, "; ".join(notes) or f"{len(images)} poses rendered"

    def refine(self, visitor: Visitor) -> list[Image.Image]:
        from oneposetrans.refine import RefineSettings, Refiner, run_refine

        names = [pair_name(SOURCE_NAME, t) for t in visitor.targets]
        if not names or not all(visitor.tree.file("reposed_result", n).exists() for n in names):
            raise BadInputError("repose first")
        settings = RefineSettings(resolution=self.config.resolution, steps=self.config.denoise_steps)
        with self._lock:
            run_refine(
                visitor.tree, lambda: Refiner(self.reposer(), self.config.models), {SOURCE_NAME: visitor.caption}, settings,
                profile=self.config.profile, names=names, overwrite=True, echo=lambda _: None,
            )
        return [Image.open(visitor.tree.file("refined_result", n)) for n in names]

    def background(self, visitor: Visitor, uploaded: str | None) -> Image.Image:
        """The source with the person removed (LaMa), or an uploaded background."""
        from oneposetrans.image_io import load_image, save_image

        target = visitor.tree.file("images_inpainted", f"{SOURCE_NAME}.png")
        if uploaded:
            image = load_image(uploaded, "RGB")
        else:
            mask_file = visitor.tree.file("images_mask", f"{SOURCE_NAME}.png")
            if not mask_file.exists():
                raise BadInputError("segment the person first (the inpainting needs the mask)")
            with self._lock:
                image = self.inpainter()(self._source(visitor), load_image(mask_file, "L"))
        save_image(image, target)
        return image

    def composite(self, visitor: Visitor, use_refined: bool) -> list[Image.Image]:
        from oneposetrans.composite import composite
        from oneposetrans.image_io import load_image, save_image

        stage = "refined" if use_refined else "reposed"
        background_file = visitor.tree.file("images_inpainted", f"{SOURCE_NAME}.png")
        if not background_file.exists():
            raise BadInputError("make the background first (inpaint or upload)")
        background = load_image(background_file, "RGB")
        finals = []
        for target in visitor.targets:
            result = visitor.tree.file(f"{stage}_result", pair_name(SOURCE_NAME, target))
            if not result.exists():
                raise BadInputError(f"{'refine' if use_refined else 'repose'} first")
            foreground = load_image(result, "RGBA")
            # The published hard cut needs a mask: the result's own alpha, thresholded.
            mask = np.where(np.asarray(foreground)[..., 3] >= 128, 255, 0).astype(np.uint8) if self.config.profile == "reference" else None
            final = composite(foreground, background, mask, self.config.profile)
            save_image(final, visitor.tree.file(f"{stage}_final_result", result.name))
            finals.append(final)
        return finals


def page_errors(function):
    """A bad file, a missing model or a photo without a person or face becomes a message in the
    page (gr.Error) instead of a traceback in the server log."""
    import gradio as gr

    @functools.wraps(function)
    def wrapper(*arguments, **keywords):
        try:
            return function(*arguments, **keywords)
        except OnePoseTransError as error:
            raise gr.Error(str(error), print_exception=False) from None

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
        state = gr.State(None)
        with gr.Row():
            with gr.Column():
                gr.Markdown("### 1. Photo and person")
                photo = gr.Image(label="photo", type="filepath", elem_id="photo", sources=["upload"])
                positive = gr.Checkbox(value=True, label="clicks mark the person (untick to mark background)")
                clicks = gr.Textbox(label="clicks", interactive=False)
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
                background_upload = gr.Image(label="your own background (optional)", type="filepath", elem_id="background-upload", sources=["upload"])
                background_button = gr.Button("Make background", elem_id="background")
                background = gr.Image(label="background", elem_id="background-view", interactive=False, format="png")
                use_refined = gr.Checkbox(value=False, label="composite the refined results")
                composite_button = gr.Button("Composite", elem_id="composite", variant="primary")
                finals = gr.Gallery(label="composite", elem_id="final", format="png")

        def on_upload(state, path):
            visitor = visitor_of(state)
            if path:
                steps.upload(visitor, path)
            return visitor, ""

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

        photo.upload(guarded(on_upload), [state, photo], [state, clicks])
        photo.select(guarded(on_select), [state, positive], [state, clicks])
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
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    demo = build_demo(DemoSteps(config))
    demo.queue(default_concurrency_limit=1).launch(
        server_name=host, server_port=port, share=share, max_file_size=MAX_FILE_SIZE, allowed_paths=[str(config.workdir)],
    )


def default_workdir() -> Path:
    return Path(tempfile.gettempdir()) / "oneposetrans-demo"
