"""The face signal of the VCM: InsightFace antelopev2 (SCRFD detector + glintr100 ArcFace),
loaded from the local folder, giving the raw 512-d embedding InstantID's Resampler expects."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from oneposetrans import registry
from oneposetrans.profiles import DEFAULT, Profile

PUBLISHED_SIDE = 1024
DETECTION_SIZE = (640, 640)
DETECTION_SCORE = 0.5
"""InsightFace's default ``det_thresh``, which InstantID and the published code kept: a face below
it is not returned at all."""
FACE_CHOICE_REASON = {
    "largest": "the subject's face is taken to be the largest, as InstantID does",
    "first": "the first InsightFace returns, as the published code took",
}


@dataclass
class FaceResult:
    embedding: np.ndarray | None
    note: str
    faces: int = 0
    keypoints: np.ndarray | None = None
    """The five landmarks (eyes, nose, mouth corners) as fractions of the photo's width and height."""


# InstantID's IdentityNet reads the five landmarks as coloured points joined to the nose.
KEYPOINT_COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255))
KEYPOINT_LIMBS = ((0, 2), (1, 2), (3, 2), (4, 2))


def draw_face_keypoints(keypoints: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """The IdentityNet condition: landmarks (fractions) drawn on black at ``size`` (W, H)."""
    import cv2

    width, height = size
    points = np.asarray(keypoints, np.float64) * [width, height]
    canvas = np.zeros((height, width, 3), np.uint8)
    thickness = max(1, round(min(width, height) / 256))
    for start, end in KEYPOINT_LIMBS:
        a, b = points[start], points[end]
        cv2.line(canvas, tuple(int(v) for v in a), tuple(int(v) for v in b), KEYPOINT_COLOURS[start], 4 * thickness)
    canvas = (canvas * 0.6).astype(np.uint8)
    for colour, (x, y) in zip(KEYPOINT_COLOURS, points):
        cv2.circle(canvas, (int(x), int(y)), 5 * thickness, colour, -1)
    return Image.fromarray(canvas)


def pick_face(faces: list, profile: Profile):
    """Reference: the first face InsightFace returns (the published code). Default: the largest,
    as InstantID does, so that a bystander's face never becomes the subject's."""
    if not faces:
        return None
    if profile.face_choice == "first":
        return faces[0]
    return max(faces, key=lambda face: float((face.bbox[2] - face.bbox[0]) * (face.bbox[3] - face.bbox[1])))


class FaceEmbedder:
    """Load once; :meth:`embed` per source photo."""

    def __init__(self, models_dir: str | os.PathLike, device: str = "cpu", profile: Profile = DEFAULT):
        from insightface.app import FaceAnalysis

        folder = registry.require("antelopev2", models_dir)
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
        self.profile = profile
        self.tiny = registry.is_tiny_kit(models_dir)
        self.app = FaceAnalysis(name=str(folder.resolve()), allowed_modules=["detection", "recognition"], providers=providers)
        self.app.prepare(ctx_id=0 if device.startswith("cuda") else -1, det_thresh=DETECTION_SCORE, det_size=DETECTION_SIZE)

    def embed(self, photo: Image.Image) -> FaceResult:
        """The face of ``photo`` as given (the generator passes :func:`~oneposetrans.generate.identity_image`)."""
        rgb = photo.convert("RGB")
        faces = self.app.get(np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1]))
        face = pick_face(faces, self.profile)
        if face is None:
            return FaceResult(None, "no face found in the source: generated without face tokens")
        note = self._note(len(faces), face)
        keypoints = None if face.kps is None else np.asarray(face.kps, np.float64) / [rgb.width, rgb.height]
        return FaceResult(np.asarray(face.embedding, dtype=np.float32), note, len(faces), keypoints)

    def _note(self, count: int, face) -> str:
        if count == 1:
            return "one face found"
        width, height = (round(float(v)) for v in (face.bbox[2] - face.bbox[0], face.bbox[3] - face.bbox[1]))
        chosen = f"used the {self.profile.face_choice} ({width}x{height} px): {FACE_CHOICE_REASON[self.profile.face_choice]}"
        if self.tiny:
            return f"{count} faces found by the tiny kit's detector (random weights: the count means nothing); {chosen}"
        return f"{count} faces scored above {DETECTION_SCORE}; {chosen}"
