"""The face signal of the VCM: InsightFace antelopev2 (SCRFD detector + glintr100 ArcFace),
loaded from the local folder, giving the raw 512-d embedding InstantID's Resampler expects."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from oneposetrans import registry

PUBLISHED_SIDE = 1024
DETECTION_SIZE = (640, 640)


@dataclass
class FaceResult:
    embedding: np.ndarray | None
    note: str
    faces: int = 0


def pick_face(faces: list, profile: str):
    """Reference: the first face InsightFace returns (the published code). Default: the largest,
    as InstantID does, so that a bystander's face never becomes the subject's."""
    if not faces:
        return None
    if profile == "reference":
        return faces[0]
    return max(faces, key=lambda face: float((face.bbox[2] - face.bbox[0]) * (face.bbox[3] - face.bbox[1])))


class FaceEmbedder:
    """Load once; :meth:`embed` per source photo."""

    def __init__(self, models_dir: str | os.PathLike, device: str = "cpu", profile: str = "default"):
        from insightface.app import FaceAnalysis

        folder = registry.require("antelopev2", models_dir)
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
        self.profile = profile
        self.app = FaceAnalysis(name=str(folder.resolve()), allowed_modules=["detection", "recognition"], providers=providers)
        self.app.prepare(ctx_id=0 if device.startswith("cuda") else -1, det_size=DETECTION_SIZE)

    def embed(self, photo: Image.Image) -> FaceResult:
        rgb = photo.convert("RGB")
        if self.profile == "reference":
            # Published: detection on the source stretched to 1024 x 1024.
            rgb = rgb.resize((PUBLISHED_SIDE, PUBLISHED_SIDE))
        faces = self.app.get(np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1]))
        face = pick_face(faces, self.profile)
        if face is None:
            return FaceResult(None, "no face found in the source: generated without face tokens")
        which = "first" if self.profile == "reference" else "largest"
        note = f"{len(faces)} faces found, used the {which}" if len(faces) > 1 else "one face found"
        return FaceResult(np.asarray(face.embedding, dtype=np.float32), note, len(faces))
