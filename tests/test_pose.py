import json

import numpy as np
import torch
from PIL import Image
import pytest

from oneposetrans.errors import BadInputError
from oneposetrans.pose import BUNDLED_POSES, Keypoints, generation_size, load_keypoints, load_pose_map, render_keypoints
from oneposetrans.profiles import DEFAULT, REFERENCE


def _write(path, flat, width=100, height=200):
    path.write_text(json.dumps({"canvas_width": width, "canvas_height": height, "people": [{"pose_keypoints_2d": flat}]}))
    return path


def test_coco18_and_body25_give_the_same_joints(tmp_path):
    coco = [float(v) for i in range(18) for v in (i * 2, i * 3, 1)]
    body25 = []
    for index in range(25):
        if index == 8 or index > 18:
            body25 += [50.0, 50.0, 1.0]
        else:
            coco_index = index if index < 8 else index - 1
            body25 += coco[3 * coco_index : 3 * coco_index + 3]
    a = load_keypoints(_write(tmp_path / "a.json", coco))
    b = load_keypoints(_write(tmp_path / "b.json", body25))
    np.testing.assert_array_equal(a.points, b.points)


def test_missing_joints_are_nan(tmp_path):
    flat = [10.0, 10.0, 1.0] * 18
    flat[0:3] = [0, 0, 0]  # confidence 0
    flat[3:6] = [-1, -1, 1]  # DeepFashion-style -1
    points = load_keypoints(_write(tmp_path / "k.json", flat)).points[0]
    assert np.isnan(points[0]).all() and np.isnan(points[1]).all() and not np.isnan(points[2]).any()


@pytest.mark.parametrize("content", ["{", '{"people": []}', '{"canvas_width": 5, "canvas_height": 5, "people": [{"pose_keypoints_2d": [1, 2]}]}'])
def test_malformed_keypoint_files_are_rejected(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(BadInputError, match="bad.json"):
        load_keypoints(path)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"joint": 4, "value": float("nan")}, "person 0, joint 4: not a finite number"),
        ({"joint": 2, "value": float("inf")}, "person 0, joint 2: not a finite number"),
        ({"hidden": True}, "no joint is visible"),
        ({"canvas": (100000, 100000)}, "canvas 100000x100000: sides up to 16384 px"),
        ({"canvas": (4000, 300)}, "the longer at most 8 times the shorter"),
    ],
)
def test_keypoints_that_would_draw_nothing_or_too_much_are_rejected(tmp_path, change, message):
    flat = [10.0, 10.0, 1.0] * 18
    if "joint" in change:
        flat[3 * change["joint"]] = change["value"]
    if change.get("hidden"):
        flat = [10.0, 10.0, 0.0] * 18
    width, height = change.get("canvas", (100, 200))
    # json.dumps writes NaN and Infinity, which json.loads reads back, as OpenPose editors may.
    path = _write(tmp_path / "pose.json", flat, width, height)
    with pytest.raises(BadInputError, match=message):
        load_keypoints(path)


def test_out_of_frame_joint_is_skipped_with_its_bones():
    points = np.full((1, 18, 2), np.nan)
    points[0, 1] = (50, 50)  # neck
    points[0, 2] = (150, 50)  # right shoulder, outside a 100-wide canvas
    canvas = np.asarray(render_keypoints(Keypoints(points, 100, 100), (100, 100)))
    lit = np.argwhere(canvas.sum(axis=2) > 0)
    # Only the neck dot (radius 4) is drawn; no bone runs towards the clipped shoulder.
    assert len(lit) > 0
    assert lit[:, 1].max() <= 54 and lit[:, 1].min() >= 46
    assert tuple(canvas[50, 50]) == (255, 85, 0)  # the neck's OpenPose colour


def test_generation_size_keeps_aspect_in_multiples_of_64():
    assert generation_size(768, 1024, 1024) == (1024, 1344)
    assert generation_size(512, 768, 256) == (256, 384)
    assert generation_size(176, 256, 1024) == (1024, 1472)


def test_bundled_poses_render_at_generation_size():
    assert len(BUNDLED_POSES) >= 2
    image, found = load_pose_map(BUNDLED_POSES[0], 256)
    assert found is None
    assert image.size == (256, 384) and np.asarray(image).max() > 0


def _astronaut(tmp_path):
    from skimage import data

    path = tmp_path / "photo.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


def test_a_photo_needs_a_detector(tmp_path):
    with pytest.raises(BadInputError, match="no pose detector"):
        load_pose_map(_astronaut(tmp_path), 256)


def test_extraction_from_a_photo_with_local_weights(tiny_models, tmp_path):
    from oneposetrans.pose import PoseExtractor

    extractor = PoseExtractor(tiny_models, detect_resolution=128)
    found, pose_map = extractor.extract(Image.open(_astronaut(tmp_path)), 256)
    assert pose_map.size == (256, 256) and pose_map.mode == "RGB"
    assert found["canvas_width"] == 512 and found["canvas_height"] == 512
    for person in found["people"]:  # random weights: any number of people, each well formed
        assert len(person["pose_keypoints_2d"]) == 54


def test_extraction_without_weights_is_the_missing_model_line(tmp_path):
    from oneposetrans.errors import MissingModelError
    from oneposetrans.pose import PoseExtractor

    with pytest.raises(MissingModelError, match="models download openpose"):
        PoseExtractor(tmp_path / "models")


def _deepfashion_points():
    points = np.full((18, 2), np.nan)
    points[1] = (88, 100)  # neck at the frame's horizontal centre
    points[2] = (88, 160)  # right shoulder straight below it
    points[5] = (-31, 100)  # an out-of-frame x, as in the published annotations
    return points


def test_reference_rendering_matches_hand_computed_pixels():
    from oneposetrans.pose import OPENPOSE_COLORS, reference_pose_canvas, render_keypoints_reference

    canvas = reference_pose_canvas(_deepfashion_points())
    # Neck (88, 100) in the 176x256 frame lands at (int(88 * 256 / 176), 100) = (128, 100).
    assert tuple(canvas[100, 128]) == OPENPOSE_COLORS[1]
    assert tuple(canvas[160, 128]) == OPENPOSE_COLORS[2]
    # Bone 1-2 is bone 0: colour 0.6 x (255, 0, 0); its middle is that colour, one column over is dark.
    assert tuple(canvas[130, 128]) == (153, 0, 0)
    assert canvas[130, 131].max() == 0
    # The published quirk: joint 5 at x = -31 is still drawn, clipped at the left edge.
    assert canvas[97:104, 0:3].any()
    assert not canvas[:, 140:].any() and not canvas[:90].any()
    assert render_keypoints_reference(_deepfashion_points()).size == (1024, 1024)


def test_default_rendering_keeps_aspect_and_skips_out_of_frame_joints():
    from oneposetrans.pose import render_deepfashion_pose

    image = np.asarray(render_deepfashion_pose(_deepfashion_points(), DEFAULT, 256))
    assert image.shape == (384, 256, 3)  # 176x256 frame -> shorter side 256, multiples of 64
    assert not image[:, :20].any()  # nothing drawn for the joint at x = -31
    # Neck at (88/176*256, 100/256*384) = (128, 150) in its OpenPose colour.
    assert tuple(image[150, 128]) == (255, 85, 0)


class _FakeDetector:
    """Stands in for OpenPose: one person, the map drawn at the generation size of the photo."""

    def extract(self, photo, resolution):
        size = generation_size(photo.width, photo.height, resolution)
        found = {"canvas_width": photo.width, "canvas_height": photo.height, "people": [{"pose_keypoints_2d": [1.0] * 54}]}
        return found, Image.new("RGB", size, (0, 0, 255))


@pytest.mark.parametrize("profile, size, name", [(REFERENCE, (1024, 1024), "t.reference.png"), (DEFAULT, (1024, 1344), "t.png")], ids=["reference", "default"])
def test_wpose_pose_maps_by_profile(tmp_path, profile, size, name):
    """A 3:4 target photo: the reference map is stretched to 1024x1024 (the only runnable published
    path), the default one keeps the aspect ratio; each profile caches its own file."""
    from types import SimpleNamespace

    from oneposetrans.generate import GenerateInputs, pose_source
    from oneposetrans.results import ResultsTree

    tree = ResultsTree(tmp_path / "results")
    Image.new("RGB", (768, 1024), (90, 90, 90)).save(tree.file("images", "t.png"))
    session = SimpleNamespace(profile=profile, pose_extractor=_FakeDetector())
    pose_map = pose_source(GenerateInputs("wpose", [], {}), tree, 1024, session)("t")
    assert pose_map.size == size
    assert sorted(p.name for p in tree.folder("poses").glob("*.png")) == [name]
    assert Image.open(tree.file("poses", name)).size == size


def test_reference_stretches_every_kind_of_target_to_1024(tmp_path):
    for path in (BUNDLED_POSES[0], _astronaut(tmp_path)):
        default, _ = load_pose_map(path, 1024, _FakeDetector)
        reference, _ = load_pose_map(path, 1024, _FakeDetector, profile=REFERENCE)
        assert reference.size == (1024, 1024)
        assert np.array_equal(np.asarray(reference), np.asarray(default.resize((1024, 1024), Image.BICUBIC)))
    assert load_pose_map(BUNDLED_POSES[0], 1024)[0].size == (1024, 1536)


def test_reference_resizes_a_given_pose_map_once_as_published(tmp_path):
    """Published: ``Image.open(pose).resize((1024, 1024))``, straight from the file."""
    path = tmp_path / "map.png"
    render_keypoints(load_keypoints(BUNDLED_POSES[0]), (300, 450)).save(path)
    reference, _ = load_pose_map(path, 1024, profile=REFERENCE)
    assert np.array_equal(np.asarray(reference), np.asarray(Image.open(path).convert("RGB").resize((1024, 1024))))


def test_reference_square_follows_the_generation_resolution():
    """1024 is the published resolution; a smaller --resolution (e.g. --smoke) shrinks the square."""
    pose_map, _ = load_pose_map(BUNDLED_POSES[0], 128, profile=REFERENCE)
    assert pose_map.size == (128, 128)


def test_the_detector_takes_the_default_device(tiny_models):
    """`--device auto` (every command's default) reached PoseExtractor unresolved from the demo and
    from WPose dataset runs, and `.to("auto")` raised."""
    from oneposetrans.pose import PoseExtractor

    extractor = PoseExtractor(tiny_models, "auto", detect_resolution=64)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert next(extractor.detector.body_estimation.model.parameters()).device.type == expected
