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


def test_a_face_count_says_where_it_comes_from_and_which_face_was_used(tiny_models, tmp_path):
    import shutil

    photo = _photo_with_patches((60, 40, 120), (300, 220, 100))
    smoke = FaceEmbedder(tiny_models, "cpu").embed(photo)
    assert smoke.faces > 1
    assert smoke.note.startswith(f"{smoke.faces} faces found by the tiny kit's detector (random weights: the count means nothing); used the largest (")
    assert "taken to be the largest" in smoke.note
    # The same files outside the kit's folder read as a real detector's.
    shutil.copytree(tiny_models / "antelopev2", tmp_path / "antelopev2")
    real = FaceEmbedder(tmp_path, "cpu", REFERENCE).embed(photo)
    assert real.note.startswith(f"{real.faces} faces scored above 0.5; used the first (") and "as the published code took" in real.note
