"""Person segmentation (GroundingDINO + SAM from local HF folders) and the tool_utils modes.

The tiny detector was trained at kit build time to call the bundled astronaut and saturated
orange-red regions "human" and to find nobody in a plain grey picture.
"""

import json
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
from PIL import Image
from skimage import data

from tests.conftest import REPO
from oneposetrans.profiles import DEFAULT, REFERENCE
from oneposetrans.segment import (
    DILATION_ITERATIONS,
    NoPersonError,
    PersonSegmenter,
    dilate,
    pick_detection,
)


@pytest.fixture(scope="module")
def segmenter(tiny_models):
    return PersonSegmenter(tiny_models, "cpu")


def _astronaut(size=None):
    image = Image.fromarray(data.astronaut())
    return image.resize(size) if size else image


def test_bundled_photo_gives_a_person_mask_at_its_size(segmenter):
    found = segmenter.segment(_astronaut((300, 180)))
    assert found.mask.shape == (180, 300) and found.mask.dtype == np.uint8
    assert set(np.unique(found.mask)) <= {0, 255} and found.mask.any()
    assert found.people >= 1 and found.score > 0.25


def test_no_person_raises_a_one_line_error(segmenter):
    with pytest.raises(NoPersonError, match=r"^grey\.png: no person found"):
        segmenter.segment(Image.new("RGB", (200, 150), (128, 128, 128)), name="grey.png")


def test_large_photo_is_segmented_downscaled_and_the_mask_mapped_back(segmenter, monkeypatch):
    seen, detected = [], []
    sam, detect = segmenter._best_sam_mask, segmenter.detect
    monkeypatch.setattr(segmenter, "_best_sam_mask", lambda image, **prompts: seen.append(image.size) or sam(image, **prompts))
    monkeypatch.setattr(segmenter, "detect", lambda image: detected.append(detect(image)) or detected[-1])
    found = segmenter.segment(_astronaut((5000, 3000)))
    assert seen == [(2048, 1229)]
    assert found.mask.shape == (3000, 5000)
    boxes, _ = detected[0]
    # The box is reported in the full-size frame.
    assert any(np.allclose(found.box, box * 5000 / 2048, rtol=1e-5) for box in boxes)


def test_reference_segments_a_large_photo_at_full_size(tiny_models, monkeypatch):
    reference = PersonSegmenter(tiny_models, "cpu", REFERENCE)
    seen = []
    sam, detect = reference._best_sam_mask, reference.detect
    monkeypatch.setattr(reference, "_best_sam_mask", lambda image, **prompts: seen.append(image.size) or sam(image, **prompts))
    monkeypatch.setattr(reference, "detect", lambda image: seen.append(image.size) or detect(image))
    found = reference.segment(_astronaut((2500, 1500)))
    assert seen == [(2500, 1500), (2500, 1500)] and found.mask.shape == (1500, 2500)


def test_point_prompts_give_a_mask(segmenter):
    mask = segmenter.segment_points(_astronaut((320, 240)), [(160, 120), (10, 10)], [1, 0])
    assert mask.shape == (240, 320) and mask.any()


def test_several_people_largest_by_default_most_confident_in_reference():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 100, 50]], np.float32)
    scores = np.array([0.9, 0.4], np.float32)
    assert pick_detection(boxes, scores, DEFAULT) == 1
    assert pick_detection(boxes, scores, REFERENCE) == 0


def test_inpainting_mask_is_dilated_with_5x5_for_8_iterations():
    mask = np.zeros((41, 41), np.uint8)
    mask[20, 20] = 255
    grown = dilate(mask)
    rows = np.nonzero(grown[:, 20])[0]
    assert rows.min() == 20 - 2 * DILATION_ITERATIONS and rows.max() == 20 + 2 * DILATION_ITERATIONS


def _mixed_folder(folder):
    folder.mkdir(parents=True)
    _astronaut().save(folder / "astronaut.png")
    _astronaut((300, 180)).save(folder / "wide.jpg")
    Image.new("RGB", (200, 150), (128, 128, 128)).save(folder / "empty_scene.png")
    (folder / "corrupt.png").write_bytes((folder / "astronaut.png").read_bytes()[:300])
    (folder / "zero.png").write_bytes(b"")
    (folder / "notes.png").write_text("not an image")


def _run(arguments, env, cwd):
    return subprocess.run(
        [sys.executable, "-m", "oneposetrans", *arguments], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_mixed_folder_good_ones_done_each_bad_one_logged_no_traceback(tmp_path, cli_env):
    results = tmp_path / "results"
    _mixed_folder(results / "images")
    sources = {p.name: p.read_bytes() for p in (results / "images").iterdir()}

    run = _run(["segment", "--results", str(results), "--smoke", "--quiet"], cli_env, tmp_path)
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    assert sorted(p.name for p in (results / "images_rgba").iterdir()) == ["astronaut.png", "wide.png"]
    assert sorted(p.name for p in (results / "images_mask").iterdir()) == ["astronaut.png", "wide.png"]
    records = [json.loads(line) for line in (results / "logs" / "segment.jsonl").read_text().splitlines()]
    reasons = {r["case"]: r["reason"] for r in records if r["status"] == "failed"}
    assert set(reasons) == {"corrupt", "zero", "notes", "empty_scene"}
    assert "corrupt or truncated" in reasons["corrupt"] and "empty file" in reasons["zero"]
    assert "not an image" in reasons["notes"] and "no person found" in reasons["empty_scene"]
    for case, reason in reasons.items():
        assert "\n" not in reason and reason in run.stdout
    assert {p.name: p.read_bytes() for p in (results / "images").iterdir()} == sources  # sources untouched

    rgba = Image.open(results / "images_rgba" / "wide.png")
    mask = np.asarray(Image.open(results / "images_mask" / "wide.png"))
    assert rgba.mode == "RGBA" and rgba.size == (300, 180) and mask.shape == (180, 300, 3)
    # RGB of images_rgba is the original photo; the dilated mask covers at least the alpha.
    alpha = np.asarray(rgba)[..., 3]
    assert ((mask[..., 0] == 255) | (alpha == 0)).all() and (mask[..., 0] == 255).sum() > (alpha == 255).sum()

    again = _run(["segment", "--results", str(results), "--smoke", "--quiet"], cli_env, tmp_path)
    assert "segment: 0 done, 2 skipped, 4 failed" in again.stdout


@pytest.mark.e2e
def test_tool_utils_modes_with_the_original_flags(tmp_path, cli_env, capsys):
    """Every tool_utils mode with the original flags, on the bundled photo: the first through the
    root script in a subprocess, the others in this process through the same entry point."""
    from oneposetrans.cli import run_script

    results = tmp_path / "results"
    images = results / "images"
    images.mkdir(parents=True)
    _astronaut((320, 240)).save(images / "astronaut.png")
    r = f"{results}/"
    first = ["--mode", "dataset", "--source_path", r + "images/", "--mask_path", r + "images_mask/", "--rgba_path", r + "images_rgba/"]
    done = subprocess.run(
        [sys.executable, "tool_utils.py", *first, "--smoke", "--quiet"], env=cli_env, cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr

    def run(*arguments):
        with mock.patch.object(sys, "argv", ["tool_utils.py", *arguments, "--smoke", "--quiet"]):
            code = run_script(str(REPO / "tool_utils.py"), ["tool-utils"])
        assert code == 0, capsys.readouterr()

    run("--mode", "inpainting_lama", "--source_path", r + "images/", "--mask_path", r + "images_mask/", "--background_path", r + "images_inpainted/")
    run("--mode", "inpainting_diffusion", "--source_path", r + "images/", "--mask_path", r + "images_mask/", "--background_path", r + "bg_diffusion/")
    # A "reposed" result: the bundled photo at a non-square size, without alpha.
    (results / "reposed_result").mkdir()
    _astronaut((256, 384)).save(results / "reposed_result" / "astronaut_to_pose1.png")
    steps = [
        ["--mode", "rgba", "--source_path", r + "reposed_result/", "--rgba_path", r + "reposed_rgba/"],
        ["--mode", "rgb", "--source_path", r + "reposed_result/", "--rgb_path", r + "reposed_rgb/", "--mask_path", r + "reposed_mask/"],
        ["--mode", "paste", "--rgb_path", r + "reposed_rgb/", "--mask_path", r + "reposed_mask/",
         "--background_path", r + "images_inpainted/", "--result_path", r + "reposed_final_result/"],
    ]
    for arguments in steps:
        run(*arguments)
    sizes = {
        folder: Image.open(next((results / folder).iterdir())).size
        for folder in ("images_rgba", "images_mask", "images_inpainted", "bg_diffusion", "reposed_rgba", "reposed_rgb", "reposed_mask", "reposed_final_result")
    }
    assert sizes == {
        "images_rgba": (320, 240), "images_mask": (320, 240), "images_inpainted": (320, 240), "bg_diffusion": (320, 240),
        "reposed_rgba": (256, 384), "reposed_rgb": (256, 384), "reposed_mask": (256, 384), "reposed_final_result": (256, 384),
    }
    on_black = np.asarray(Image.open(results / "reposed_rgb" / "astronaut_to_pose1.png"))
    undilated = np.asarray(Image.open(results / "reposed_mask" / "astronaut_to_pose1.png"))[..., 0]
    assert (on_black[undilated == 0] == 0).all()
    assert set(np.unique(undilated)) <= {0, 255}
