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

from oneposetrans.errors import BadInputError, NotBuiltError
from oneposetrans.image_io import load_image

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
    all_points = []
    for index, person in enumerate(people):
        flat = np.asarray(person.get("pose_keypoints_2d", []), dtype=np.float64)
        if flat.size not in (3 * NUM_JOINTS, 3 * 25):
            raise BadInputError(
                f"{path}: person {index} has {flat.size} numbers; expected 54 (COCO-18) or 75 (BODY_25)"
            )
        triples = flat.reshape(-1, 3)
        if len(triples) == 25:
            triples = triples[_BODY25_TO_COCO18]
        points = triples[:, :2].copy()
        missing = (triples[:, 2] <= 0) | (points < 0).any(axis=1)
        points[missing] = np.nan
        all_points.append(points)
    return Keypoints(np.stack(all_points), width, height)


def generation_size(width: int, height: int, resolution: int = 1024, multiple: int = 64) -> tuple[int, int]:
    """Scale so the shorter side is ``resolution``, then round both sides to ``multiple``.

    This is how the published WPose path sized its pose maps (and hence its outputs).
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


def _looks_like_pose_map(image: Image.Image) -> bool:
    """Rendered pose maps are mostly black; photos are not."""
    gray = np.asarray(image.convert("L"))
    return float((gray < 16).mean()) > 0.6


def load_pose_map(path: str | os.PathLike, resolution: int) -> Image.Image:
    """A target pose as a ControlNet map at its generation size.

    ``path`` is OpenPose JSON keypoints or an already rendered pose map image.
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        keypoints = load_keypoints(path)
        return render_keypoints(keypoints, generation_size(keypoints.width, keypoints.height, resolution))
    image = load_image(path, "RGB")
    if not _looks_like_pose_map(image):
        raise NotBuiltError(
            f"{path}: looks like a photo; extracting a pose from a photo is not built yet (issue 8). "
            "Pass OpenPose keypoints JSON or a rendered pose map."
        )
    return image.resize(generation_size(image.width, image.height, resolution), Image.BILINEAR)
