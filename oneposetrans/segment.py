"""Person segmentation: GroundingDINO finds the people from the text "human", SAM cuts one out.

The published tool (tool_utils.py) runs GroundingDINO (Liu et al., 2023) with the
classes ["human"] at box and text thresholds 0.25, keeps the boxes that survive NMS at IoU 0.8,
prompts SAM (Kirillov et al., 2023) with the first box and keeps the best of its three masks.
Here both models are transformers' classes on local Hugging Face folders, loaded once per run.
Masks are person = 255, background = 0; only the inpainting mask is dilated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from oneposetrans import registry
from oneposetrans.errors import BadInputError
from oneposetrans.image_io import IMAGE_SUFFIXES, load_image, save_image
from oneposetrans.profiles import DEFAULT, Profile
from oneposetrans.results import StageLog, stem
from oneposetrans.runtime import quiet_libraries, resolve_device
from oneposetrans.stages import Stage

DETECTION_TEXT = "human."
BOX_THRESHOLD = 0.25
TEXT_THRESHOLD = 0.25
NMS_IOU = 0.8
# The inpainting mask covers the person's outline generously so LaMa leaves no silhouette.
DILATION_KERNEL = 5
DILATION_ITERATIONS = 8
# In the default profile, photos larger than this are segmented on a downscaled copy and the mask
# is mapped back: both models resize to about 1k pixels anyway, and full-size intermediates would
# only cost memory.
WORKING_MAX_SIDE = 2048

SEGMENT_MODES = ("dataset", "rgba", "rgb")


class NoPersonError(BadInputError):
    """The detector found nobody, or SAM returned an empty mask, in one image."""


@dataclass
class Segmentation:
    mask: np.ndarray
    """H x W uint8 at the image's own size: person 255, background 0."""
    box: tuple[float, float, float, float]
    score: float
    people: int
    """How many detections survived NMS (only one is segmented)."""


def pick_detection(boxes: np.ndarray, scores: np.ndarray, profile: Profile) -> int:
    """Index of the person to segment: the most confident box (reference), or the largest (default).

    The published tool took detection 0 after NMS, which is the most confident one; on a photo
    with bystanders the subject is usually the largest person, which is what the default takes.
    """
    if profile.person_choice == "most confident":
        return int(np.argmax(scores))
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return int(np.argmax(areas))


def dilate(mask: np.ndarray) -> np.ndarray:
    """The inpainting mask: a 5x5 ones kernel, 8 iterations, as the published tool."""
    import cv2

    return cv2.dilate(mask, np.ones((DILATION_KERNEL, DILATION_KERNEL), np.uint8), iterations=DILATION_ITERATIONS)


def rgba_with_mask(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """The original pixels with the mask as alpha (the `images_rgba` format)."""
    rgba = np.dstack([np.asarray(image.convert("RGB")), mask])
    return Image.fromarray(rgba, "RGBA")


def person_on_black(image: Image.Image, mask: np.ndarray) -> Image.Image:
    return Image.fromarray(np.asarray(image.convert("RGB")) * (mask[..., None] > 127).astype(np.uint8), "RGB")


def mask_image(mask: np.ndarray) -> Image.Image:
    """Masks are written with three equal channels, as the published tool wrote them."""
    return Image.fromarray(np.repeat(mask[..., None], 3, axis=2), "RGB")


def _working_copy(image: Image.Image, profile: Profile) -> tuple[Image.Image, float]:
    side = max(image.size)
    if side <= WORKING_MAX_SIDE or profile.segment_size == "full size":
        return image, 1.0
    scale = WORKING_MAX_SIDE / side
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.BILINEAR), scale


def _full_size_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (mask.shape[1], mask.shape[0]) == size:
        return mask
    resized = Image.fromarray(mask).resize(size, Image.BILINEAR)
    return np.where(np.asarray(resized) > 127, 255, 0).astype(np.uint8)


class PersonSegmenter:
    """GroundingDINO + SAM, loaded once; :meth:`segment` per image, :meth:`segment_points` for clicks."""

    def __init__(self, models_dir: str | os.PathLike, device: str = "auto", profile: Profile = DEFAULT):
        import torch
        from transformers import GroundingDinoForObjectDetection, GroundingDinoProcessor, SamModel, SamProcessor

        quiet_libraries()

        self.device = resolve_device(device)
        self.profile = profile
        detector_dir = registry.require("grounding-dino", models_dir)
        sam_dir = registry.require("sam", models_dir)
        self.detector_processor = GroundingDinoProcessor.from_pretrained(detector_dir)
        self.detector = GroundingDinoForObjectDetection.from_pretrained(detector_dir).to(self.device).eval()
        self.sam_processor = SamProcessor.from_pretrained(sam_dir)
        self.sam = SamModel.from_pretrained(sam_dir).to(self.device).eval()
        self._torch = torch

    def detect(self, image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
        """People boxes (x0, y0, x1, y1 in pixels) and scores after NMS, most confident first."""
        from torchvision.ops import nms

        inputs = self.detector_processor(images=image, text=DETECTION_TEXT, return_tensors="pt").to(self.device)
        with self._torch.inference_mode():
            outputs = self.detector(**inputs)
        found = self.detector_processor.post_process_grounded_object_detection(
            outputs,
            inputs["input_ids"],
            threshold=BOX_THRESHOLD,
            text_threshold=TEXT_THRESHOLD,
            target_sizes=[(image.height, image.width)],
        )[0]
        boxes, scores = found["boxes"].float().cpu(), found["scores"].float().cpu()
        keep = nms(boxes, scores, NMS_IOU)
        return boxes[keep].numpy(), scores[keep].numpy()

    def _best_sam_mask(self, image: Image.Image, **prompts) -> np.ndarray:
        inputs = self.sam_processor(images=image, return_tensors="pt", **prompts).to(self.device)
        with self._torch.inference_mode():
            outputs = self.sam(**inputs, multimask_output=True)
        masks = self.sam_processor.post_process_masks(
            outputs.pred_masks.cpu(), inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu()
        )[0][0]
        best = int(outputs.iou_scores[0, 0].argmax())
        return np.where(masks[best].numpy(), 255, 0).astype(np.uint8)

    def segment(self, image: Image.Image, name: str = "image") -> Segmentation:
        """Mask of one person in ``image``; :class:`NoPersonError` names ``name`` when there is none."""
        image = image.convert("RGB")
        working, scale = _working_copy(image, self.profile)
        boxes, scores = self.detect(working)
        if len(boxes) == 0:
            raise NoPersonError(f"{name}: no person found (GroundingDINO 'human' above {BOX_THRESHOLD})")
        chosen = pick_detection(boxes, scores, self.profile)
        box = boxes[chosen]
        mask = self._best_sam_mask(working, input_boxes=[[box.tolist()]])
        if not mask.any():
            raise NoPersonError(f"{name}: SAM returned an empty mask for the detected person")
        return Segmentation(
            mask=_full_size_mask(mask, image.size),
            box=tuple(float(v) / scale for v in box),
            score=float(scores[chosen]),
            people=len(boxes),
        )

    def segment_points(
        self, image: Image.Image, points: Sequence[tuple[float, float]], labels: Sequence[int]
    ) -> np.ndarray:
        """Mask from clicks (x, y in pixels; label 1 = person, 0 = not person), as the demo needs."""
        if not points:
            raise BadInputError("point segmentation needs at least one click")
        image = image.convert("RGB")
        working, scale = _working_copy(image, self.profile)
        mask = self._best_sam_mask(
            working,
            input_points=[[[[x * scale, y * scale] for x, y in points]]],
            input_labels=[[list(labels)]],
        )
        return _full_size_mask(mask, image.size)


@dataclass
class SegmentOutputs:
    """Where a segmentation mode writes; None for what the mode does not write."""

    rgba: Path | None = None
    mask: Path | None = None
    rgb: Path | None = None
    dilate_mask: bool = False

    @classmethod
    def for_mode(cls, mode: str, mask: Path | None, rgba: Path | None, rgb: Path | None) -> "SegmentOutputs":
        """The published modes: dataset = RGBA + dilated mask, rgba = RGBA, rgb = on black + mask."""
        needed = {"dataset": ("rgba_path", "mask_path"), "rgba": ("rgba_path",), "rgb": ("rgb_path", "mask_path")}[mode]
        given = {"rgba_path": rgba, "mask_path": mask, "rgb_path": rgb}
        missing = [f"--{flag}" for flag in needed if given[flag] is None]
        if missing:
            raise BadInputError(f"--mode {mode} needs {' and '.join(missing)}")
        if mode == "dataset":
            return cls(rgba=rgba, mask=mask, dilate_mask=True)
        if mode == "rgba":
            return cls(rgba=rgba)
        return cls(rgb=rgb, mask=mask)

    def files(self, name: str) -> list[Path]:
        return [folder / f"{name}.png" for folder in (self.rgba, self.mask, self.rgb) if folder is not None]

    def write(self, image: Image.Image, segmentation: Segmentation, name: str) -> None:
        if self.rgba is not None:
            save_image(rgba_with_mask(image, segmentation.mask), self.rgba / f"{name}.png")
        if self.rgb is not None:
            save_image(person_on_black(image, segmentation.mask), self.rgb / f"{name}.png")
        if self.mask is not None:
            mask = dilate(segmentation.mask) if self.dilate_mask else segmentation.mask
            save_image(mask_image(mask), self.mask / f"{name}.png")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Every file of ``folder`` that claims to be an image, sorted; non-images are reported later."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInputError(f"{folder}: no such folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


class SegmentStage(Stage[Path]):
    """Segment every image given, writing what ``outputs`` asks for (steps 1, 6, 7 and 10).

    With ``use_alpha`` (the default profile on generated results), an image whose alpha channel
    is a real matte, LayerDiffuse's, gives the mask itself and no model is loaded; the published
    steps 6, 7 and 10 dropped that alpha on reading and segmented the result again. ``shown_as``
    names an image in messages by the file the user gave rather than its copy in the tree.
    """

    name = "segment"

    def __init__(self, outputs: SegmentOutputs, use_alpha: bool = False, overwrite: bool = False, shown_as: dict[str, str] | None = None):
        self.writes = outputs
        self.use_alpha = use_alpha
        self.overwrite = overwrite
        self.shown_as = shown_as or {}

    def outputs(self, case: Path) -> list[Path]:
        return self.writes.files(stem(case))

    def run(self, case: Path, session, log: StageLog) -> None:
        name = stem(case)
        if self.use_alpha:
            rgba = load_image(case, "RGBA")
            image = rgba.convert("RGB")
            alpha = np.asarray(rgba)[..., 3]
            if alpha.min() < 255:
                if not (alpha >= 128).any():
                    raise NoPersonError(f"{case}: the alpha channel is empty")
                matte = np.where(alpha >= 128, 255, 0).astype(np.uint8)
                self.writes.write(image, Segmentation(matte, (0.0, 0.0, float(image.width), float(image.height)), 1.0, 1), name)
                log.ok(name, matte="alpha")
                return
        else:
            image = load_image(case, "RGB")
        found = session.segmenter.segment(image, name=self.shown_as.get(name, str(case)))
        self.writes.write(image, found, name)
        log.ok(name, matte="sam", people=found.people, score=round(found.score, 4), box=[round(v, 1) for v in found.box])
