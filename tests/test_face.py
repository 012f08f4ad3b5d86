"""Face embeddings from antelopev2 through insightface, on the tiny kit's ONNX models."""

from types import SimpleNamespace

import numpy as np
from PIL import Image

from oneposetrans.profiles import DEFAULT, REFERENCE
from oneposetrans.face import FaceEmbedder, pick_face


def _photo_with_patches(*boxes):
    photo = np.full((480, 360, 3), 128, np.uint8)
    for top, left, size in boxes:
        photo[top : top + size, left : left + size] = (220, 140, 90)  # RGB, red well above blue
    return Image.fromarray(photo)


def test_face_analysis_loads_the_kit_and_embeds(tiny_models):
    from insightface.app import FaceAnalysis

    app = FaceAnalysis(name=str(tiny_models / "antelopev2"), providers=["CPUExecutionProvider"])
    assert set(app.models) == {"detection", "recognition", "landmark_3d_68", "landmark_2d_106", "genderage"}
    embedder = FaceEmbedder(tiny_models, "cpu")
    found = embedder.embed(_photo_with_patches((100, 120, 80)))
    assert found.embedding is not None and found.embedding.shape == (512,) and found.faces >= 1
    missing = embedder.embed(Image.new("RGB", (300, 400), (128, 128, 128)))
    assert missing.embedding is None and "no face found" in missing.note


def test_several_faces_largest_by_default_first_in_reference():
    small = SimpleNamespace(bbox=np.array([0, 0, 10, 10]), det_score=0.9)
    large = SimpleNamespace(bbox=np.array([0, 0, 50, 40]), det_score=0.6)
    assert pick_face([small, large], DEFAULT) is large
    assert pick_face([small, large], REFERENCE) is small
    assert pick_face([], DEFAULT) is None
