"""Target poses: OpenPose keypoint files, pose maps, and the generation size they imply.

Keypoints follow OpenPose's COCO-18 body order (nose, neck, right shoulder, elbow, wrist,
left shoulder, elbow, wrist, right hip, knee, ankle, left hip, knee, ankle, right eye, left
eye, right ear, left ear). Maps are drawn with the standard ControlNet OpenPose renderer
(controlnet_aux), which is what OpenPose ControlNets are trained on.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from typing import Callable

from oneposetrans import registry
from oneposetrans.errors import BadInputError
from oneposetrans.image_io import load_image, save_image
from oneposetrans.profiles import DEFAULT, Profile
from oneposetrans.results import ResultsTree, StageLog, is_done, pair_name, pose_map_name, write_json_atomic
from oneposetrans.runtime import resolve_device
from oneposetrans.stages import Stage

NUM_JOINTS = 18
# OpenPose BODY_25 -> COCO-18: drop MidHip (8) and the six foot points (19-24).
_BODY25_TO_COCO18 = [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]
BUNDLED_POSES = tuple(
    sorted((Path(__file__).parent / "data").glob("pose_*.json"))
)


@dataclass
class Keypoints:
    """One or more people as (people, 18, 2) pixel coordinates on a canvas; NaN = missing."""

    points: np.ndarray
    width: int
    height: int


MAX_CANVAS_SIDE = 16384
MAX_CANVAS_RATIO = 8
"""A pose canvas larger or thinner than any photo is a broken file: the map is drawn at the
canvas's aspect ratio, so a 100000x10 canvas would ask for a map of millions of pixels."""


def load_keypoints(path: str | os.PathLike) -> Keypoints:
    """Read an OpenPose JSON file (``people[].pose_keypoints_2d``, 18 or 25 joints).

    A joint with confidence 0 or a negative coordinate is missing. The canvas size comes
    from ``canvas_width``/``canvas_height``, as written by OpenPose editors and ControlNet.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadInputError(f"{path}: not valid JSON ({error})") from None
    try:
        width, height = int(data["canvas_width"]), int(data["canvas_height"])
        people = data["people"]
    except (KeyError, TypeError, ValueError):
        raise BadInputError(f"{path}: expected OpenPose JSON with canvas_width, canvas_height and people") from None
    if width <= 0 or height <= 0 or not people:
        raise BadInputError(f"{path}: empty canvas or no people")
    if max(width, height) > MAX_CANVAS_SIDE or max(width, height) > MAX_CANVAS_RATIO * min(width, height):
        raise BadInputError(
            f"{path}: canvas {width}x{height}: sides up to {MAX_CANVAS_SIDE} px, the longer at most {MAX_CANVAS_RATIO} times the shorter"
        )
    all_points = []
    for index, person in enumerate(people):
        flat = np.asarray(person.get("pose_keypoints_2d", []), dtype=np.float64)
        if flat.size not in (3 * NUM_JOINTS, 3 * 25):
            raise BadInputError(
                f"{path}: person {index} has {flat.size} numbers; expected 54 (COCO-18) or 75 (BODY_25)"
            )
        triples = flat.reshape(-1, 3)
        if not np.isfinite(triples).all():
            joint = int(np.flatnonzero(~np.isfinite(triples).all(axis=1))[0])
            raise BadInputError(f"{path}: person {index}, joint {joint}: not a finite number (NaN or infinity)")
        if len(triples) == 25:
            triples = triples[_BODY25_TO_COCO18]
        points = triples[:, :2].copy()
        missing = (triples[:, 2] <= 0) | (points < 0).any(axis=1)
        points[missing] = np.nan
        all_points.append(points)
    stacked = np.stack(all_points)
    if np.isnan(stacked).all():
        raise BadInputError(f"{path}: no joint is visible (every confidence is 0 or a coordinate negative)")
    return Keypoints(stacked, width, height)


def generation_size(width: int, height: int, resolution: int = 1024, multiple: int = 64) -> tuple[int, int]:
    """Scale so the shorter side is ``resolution``, then round both sides to ``multiple``.

    The size the published WPose detector drew its maps at; the published generator then could
    only run the path that stretched them to 1024x1024 (:func:`fit_pose_map`).
    """
    scale = resolution / min(width, height)
    return (
        max(multiple, int(round(width * scale / multiple)) * multiple),
        max(multiple, int(round(height * scale / multiple)) * multiple),
    )


def render_keypoints(keypoints: Keypoints, size: tuple[int, int]) -> Image.Image:
    """Draw the skeleton(s) on a black canvas of ``size`` (width, height).

    Keypoints are scaled from their canvas to ``size`` per axis; joints outside the canvas are
    skipped (with their bones) rather than drawn at a clipped, wrong place.
    """
    with warnings.catch_warnings():
        # controlnet_aux imports every annotator; some re-register timm models noisily.
        warnings.simplefilter("ignore")
        from controlnet_aux.open_pose.body import Keypoint
        from controlnet_aux.open_pose.util import draw_bodypose

    width, height = size
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    for person in keypoints.points:
        joints = []
        for x, y in person:
            inside = not (math.isnan(x) or math.isnan(y)) and 0 <= x < keypoints.width and 0 <= y < keypoints.height
            joints.append(Keypoint(x / keypoints.width, y / keypoints.height) if inside else None)
        canvas = draw_bodypose(canvas, joints)
    return Image.fromarray(canvas)


# OpenPose COCO-18 palette (joint i) and the 17 bones in OpenPose order, as (from, to) joints.
OPENPOSE_COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)
OPENPOSE_BONES = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)
DEEPFASHION_FRAME = (176, 256)  # (width, height) of the keypoint annotations


def reference_pose_canvas(points: np.ndarray, frame: tuple[int, int] = DEEPFASHION_FRAME) -> np.ndarray:
    """CFLD's DeepFashion pose drawing on a 256x256 canvas, as OnePoseTrans used it.

    ``points`` is (18, 2) of (x, y) in the ``frame`` (width, height), NaN for missing joints.
    As published: x is stretched by 256/width (y by 256/height), coordinates are truncated,
    bones are anti-aliased lines of width 2 in 0.6x the joint colours, joints filled circles
    of radius 3; joints outside the frame (other than the -1 marker) are drawn where they fall.
    """
    import cv2

    canvas = np.zeros((256, 256, 3), dtype=np.uint8)
    scale_x, scale_y = 256 / frame[0], 256 / frame[1]
    pixel = lambda joint: (int(points[joint][0] * scale_x), int(points[joint][1] * scale_y))
    present = ~np.isnan(points).any(axis=1)
    for bone, (start, end) in enumerate(OPENPOSE_BONES):
        if present[start] and present[end]:
            color = tuple(int(c * 0.6) for c in OPENPOSE_COLORS[bone])
            cv2.line(canvas, pixel(start), pixel(end), color, 2, cv2.LINE_AA)
    for joint in np.flatnonzero(present):
        cv2.circle(canvas, pixel(joint), 3, OPENPOSE_COLORS[joint], -1, cv2.LINE_AA)
    return canvas


def render_keypoints_reference(points: np.ndarray, frame: tuple[int, int] = DEEPFASHION_FRAME) -> Image.Image:
    """The published DeepFashion pose map: :func:`reference_pose_canvas` stretched to 1024x1024
    with PIL's default resampling for RGB (bicubic), as the script's ``resize((1024, 1024))``."""
    return Image.fromarray(reference_pose_canvas(points, frame)).resize((1024, 1024), Image.BICUBIC)


PUBLISHED_POSE_SIDE = 1024


def fit_pose_map(pose_map: Image.Image, profile: Profile, side: int = PUBLISHED_POSE_SIDE) -> Image.Image:
    """The map the generator is given. ``pose_canvas == "square"`` (reference): stretched to a ``side`` square (1024, the
    generation resolution) with PIL's default (bicubic), as the only runnable published path did
    (``Image.open(pose).resize((1024, 1024))``; the active WPose line passed a numpy map that
    diffusers 0.28 rejects). ``"aspect"`` (default): unchanged, the person keeps the target's aspect ratio."""
    if profile.pose_canvas == "square" and pose_map.size != (side, side):
        return pose_map.resize((side, side), Image.BICUBIC)
    return pose_map


def render_deepfashion_pose(
    points: np.ndarray, profile: Profile = DEFAULT, resolution: int = 1024, frame: tuple[int, int] = DEEPFASHION_FRAME
) -> Image.Image:
    """A DeepFashion target pose as a ControlNet map, by the profile's ``deepfashion_pose``.

    ``"cfld"`` (reference) reproduces the published square stretch; ``"openpose"`` (default) keeps
    the frame's aspect ratio at the generation size and draws the standard OpenPose skeleton
    there, skipping joints outside the frame.
    """
    if profile.deepfashion_pose == "cfld":
        return render_keypoints_reference(points, frame)
    return render_keypoints(Keypoints(points[None], *frame), generation_size(*frame, resolution))


class PoseExtractor:
    """OpenPose body (+ hands) detector from the registry's local checkpoints, loaded once.

    Runs on the photo's RGB pixels (the published scripts fed OpenCV's BGR by mistake) at
    ``detect_resolution`` on the shorter side, and renders the map at the generation size.
    """

    def __init__(self, models_dir: str | os.PathLike, device: str = "cpu", hands: bool = True, detect_resolution: int = 512):
        folder = registry.require("openpose", models_dir)
        # Callers pass the CLI's device as given; "auto" must become a real device before .to().
        device = str(resolve_device(device))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from controlnet_aux.open_pose import Body, Hand, OpenposeDetector

        hand = Hand(str(folder / "hand_pose_model.pth")) if hands else None
        self.detector = OpenposeDetector(Body(str(folder / "body_pose_model.pth")), hand, None)
        if device != "cpu":
            self.detector.body_estimation.to(device)
            if hand is not None:
                self.detector.hand_estimation.to(device)
        self.hands = hands
        self.detect_resolution = detect_resolution

    def extract(self, photo: Image.Image, resolution: int) -> tuple[dict, Image.Image]:
        """(OpenPose JSON of the people found, pose map at the generation size)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from controlnet_aux.open_pose import draw_poses

        scale = self.detect_resolution / min(photo.size)
        small = photo.convert("RGB").resize((round(photo.width * scale), round(photo.height * scale)), Image.BICUBIC)
        poses = self.detector.detect_poses(np.asarray(small), include_hand=self.hands)
        width, height = generation_size(photo.width, photo.height, resolution)
        pose_map = Image.fromarray(draw_poses(poses, height, width, draw_body=True, draw_hand=self.hands, draw_face=False))

        def flat(points) -> list[float]:
            values = []
            for point in points or []:
                values += [0.0, 0.0, 0.0] if point is None else [point.x * photo.width, point.y * photo.height, float(point.score)]
            return values

        people = [
            {
                "pose_keypoints_2d": flat(pose.body.keypoints),
                "hand_left_keypoints_2d": flat(pose.left_hand),
                "hand_right_keypoints_2d": flat(pose.right_hand),
            }
            for pose in poses
        ]
        return {"version": 1.3, "canvas_width": photo.width, "canvas_height": photo.height, "people": people}, pose_map


def _looks_like_pose_map(image: Image.Image) -> bool:
    """Rendered pose maps are mostly black; photos are not."""
    gray = np.asarray(image.convert("L"))
    return float((gray < 16).mean()) > 0.6


def needs_detector(path: str | os.PathLike) -> bool:
    """Read a target pose file as :func:`load_pose_map` will, without a model, so that a bad one
    is reported before any model loads: raises :class:`BadInputError` for a file that cannot
    serve, and says whether it is a photo (the pose detector must run on it)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        load_keypoints(path)
        return False
    return not _looks_like_pose_map(load_image(path, "RGB"))


def load_pose_map(
    path: str | os.PathLike,
    resolution: int,
    extractor: "Callable[[], PoseExtractor] | None" = None,
    profile: Profile = DEFAULT,
) -> tuple[Image.Image, dict | None]:
    """A target pose as a ControlNet map at its generation size (:func:`fit_pose_map` for the
    profile), and the keypoints found when the pose was extracted from a photo.

    ``path`` is OpenPose JSON keypoints, an already rendered pose map, or a photo of a person
    (then ``extractor`` supplies the detector, loaded on first use).
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        keypoints = load_keypoints(path)
        pose_map = render_keypoints(keypoints, generation_size(keypoints.width, keypoints.height, resolution))
        return fit_pose_map(pose_map, profile, resolution), None
    image = load_image(path, "RGB")
    if _looks_like_pose_map(image):
        if profile.pose_canvas == "square":  # published: the file stretched to the square, one resize
            return fit_pose_map(image, profile, resolution), None
        return image.resize(generation_size(image.width, image.height, resolution), Image.BILINEAR), None
    if extractor is None:
        raise BadInputError(f"{path}: looks like a photo, and no pose detector was given")
    return pose_from_photo(image, path, resolution, extractor, profile)


def pose_from_photo(
    image: Image.Image, path: str | os.PathLike, resolution: int, extractor: "Callable[[], PoseExtractor]", profile: Profile = DEFAULT
) -> tuple[Image.Image, dict]:
    """The pose of the person in a photo (OpenPose), as a map fitted for the profile, and the keypoints."""
    found, pose_map = extractor().extract(image, resolution)
    if not found["people"]:
        raise BadInputError(f"{path}: no person found by the pose detector")
    return fit_pose_map(pose_map, profile, resolution), found


class PoseMaps:
    """The ControlNet map of each target, rendered once per profile into the results tree's
    ``poses/`` (:func:`~oneposetrans.results.pose_map_name`), with the keypoints found in a photo
    beside it as ``<target>.json``. Every flow reads its target poses through this cache."""

    def __init__(self, tree: ResultsTree, profile: Profile = DEFAULT):
        self.tree = tree
        self.profile = profile
        self.rendered = 0

    def path(self, target: str) -> Path:
        return self.tree.file("poses", pose_map_name(target, self.profile))

    def get(self, target: str, render: "Callable[[], tuple[Image.Image, dict | None]]", overwrite: bool = False) -> Image.Image:
        """The cached map of ``target``, or ``render()``'s, written to the cache first."""
        cached = self.path(target)
        if not overwrite and is_done(cached):
            return load_image(cached, "RGB")
        pose_map, found = render()
        if found is not None:
            write_json_atomic(self.tree.file("poses", f"{target}.json"), found)
        save_image(pose_map, cached)
        self.rendered += 1
        return pose_map


class PoseStage(Stage[str]):
    """The ControlNet map of each target pose file (OpenPose JSON, a pose map, or a photo the
    detector reads) into the pose cache, once per profile; a pose that cannot be had fails
    alone. ``files`` maps each target's name to its file; with ``source``, a target is logged
    as the pair it serves."""

    name = "pose"
    unit = "pose"

    def __init__(self, maps: PoseMaps, files: dict[str, Path], resolution: int, source: str | None = None, overwrite: bool = False):
        self.maps = maps
        self.files = files
        self.resolution = resolution
        self.source = source
        self.overwrite = overwrite

    def models(self, session) -> list[str]:
        try:
            return ["openpose"] if any(needs_detector(path) for path in self.files.values()) else []
        except BadInputError:  # the file fails when its case runs, with its own line
            return ["openpose"]

    def case_name(self, target: str) -> str:
        return pair_name(self.source, target) if self.source else target

    def outputs(self, target: str) -> list[Path]:
        return [self.maps.path(target)]

    def run(self, target: str, session, log: StageLog) -> None:
        render = lambda: load_pose_map(self.files[target], self.resolution, lambda: session.pose_extractor, session.profile)  # noqa: E731
        pose_map = self.maps.get(target, render, overwrite=self.overwrite)
        log.ok(self.case_name(target), size=list(pose_map.size))
