"""IMAGPose end to end on the tiny kit: every mode through the CLI, the pipeline's tiles, the
untrained checkpoint, and bad input as one line."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from oneposetrans.cli import main
from oneposetrans.pose import BUNDLED_POSES

QUICK = ["--smoke", "--device", "cpu", "--quiet", "--steps", "2"]


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    """Two photos in the bundled poses' 2:3 frame (pose maps drawn from the bundled JSON give
    the sources' poses, so no detector is needed)."""
    folder = tmp_path_factory.mktemp("people")
    rng = np.random.default_rng(0)
    paths = []
    for name in ("anna", "anna_back"):
        pixels = rng.integers(0, 255, (192, 128, 3), dtype=np.uint8)
        paths.append(folder / f"{name}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def _results(out):
    return sorted(p.name for p in (out / "reposed_result").iterdir())


@pytest.mark.parametrize(
    "mode, sources, poses, expected",
    [
        ("t1", 1, 1, ["anna_to_pose_hands_on_hips.png"]),
        ("t2", 1, 1, ["anna_to_pose_hands_on_hips.png"]),
        ("multi-target", 1, 2, ["anna_to_pose_hands_on_hips.png", "anna_to_pose_wave.png"]),
        ("multi-source", 2, 1, ["anna_to_pose_hands_on_hips.png"]),
    ],
)
def test_every_mode_runs_through_the_cli(mode, sources, poses, expected, people, tmp_path, tiny_models, capsys):
    out = tmp_path / "out"
    source_poses = [str(BUNDLED_POSES[0])] * sources
    command = ["imagpose", "generate", "--source", *map(str, people[:sources]), "--source-pose", *source_poses,
               "--pose", *map(str, BUNDLED_POSES[:poses]), "--mode", mode, "--out", str(out), *QUICK]
    assert main(command) == 0, capsys.readouterr().err
    assert _results(out) == expected
    for name in expected:
        target = name.split("_to_")[1]
        pose_map = Image.open(out / "poses" / target)
        assert Image.open(out / "reposed_result" / name).size == pose_map.size  # the pad undone
    assert (out / "contact_sheet.png").is_file() and (out / "canvas_anna.png").is_file()
    records = [json.loads(line) for line in (out / "logs" / "imagpose.jsonl").read_text().splitlines()]
    assert [r["mode"] for r in records] == [mode] * len(expected)


def test_the_results_are_the_tiles_the_mode_generates(people, tiny_models):
    from oneposetrans.imagpose import canvas
    from oneposetrans.imagpose.pipeline_imagpose import ImagPosePipeline
    from oneposetrans.pose import load_pose_map

    pipeline = ImagPosePipeline.from_pretrained(tiny_models / "imagpose")
    pipeline.set_progress_bar_config(disable=True)
    source = Image.open(people[0]).convert("RGB")
    source_pose, _ = load_pose_map(BUNDLED_POSES[0], 128)
    targets = [load_pose_map(path, 128)[0] for path in BUNDLED_POSES[:2]]
    settings = lambda: dict(num_inference_steps=2, tile_long_side=128, generator=torch.Generator().manual_seed(42))  # noqa: E731
    output = pipeline([source], [source_pose], targets, "multi-target", **settings())
    tiles = canvas.split(output.canvas)
    tile = canvas.tile_size(*source.size, 128)
    for image, index, target in zip(output.images, [1, 2], targets):
        _, frame = canvas.fit(target, tile)
        assert np.array_equal(np.asarray(image), np.asarray(canvas.unfit(tiles[index], frame, target.size)))
    again = pipeline([source], [source_pose], targets, "multi-target", **settings())
    assert np.array_equal(np.asarray(again.canvas), np.asarray(output.canvas))  # seeded
    other = pipeline([source], [source_pose], targets[::-1], "multi-target", **settings())
    assert not np.array_equal(np.asarray(other.images[0]), np.asarray(output.images[0]))  # the pose matters


def test_smoke_generate_runs_on_bundled_inputs_alone(tmp_path, tiny_models, capsys):
    out = tmp_path / "smoke"
    assert main(["imagpose", "generate", "--smoke", "--quiet", "--device", "cpu", "--steps", "1", "--out", str(out)]) == 0, capsys.readouterr().err
    assert len(list((out / "reposed_result").iterdir())) == 1 and (out / "contact_sheet.png").is_file()
    assert main(["imagpose", "generate", "--quiet", "--out", str(tmp_path / "none")]) == 1
    assert "needs --source PHOTO" in capsys.readouterr().err and not (tmp_path / "none").exists()


def test_a_giant_image_encoder_is_projected_to_the_unets_width(people, tmp_path, tiny_models, capsys):
    from oneposetrans.imagpose.checkpoint import load_pipeline

    folder = tmp_path / "giant"
    assert main(["imagpose", "init", "--smoke", "--device", "cpu", "--image-encoder", "dinov2-giant", "--out", str(folder)]) == 0
    pipeline = load_pipeline(folder)
    width, cross = pipeline.image_encoder.config.hidden_size, pipeline.unet.config.cross_attention_dim
    assert pipeline.image_encoder.config.use_swiglu_ffn and width != cross
    assert (pipeline.feature_tokenizer.projection.in_features, pipeline.feature_tokenizer.projection.out_features) == (width, cross)
    command = ["imagpose", "generate", *QUICK, "--checkpoint", str(folder), "--source", str(people[0]),
               "--source-pose", str(BUNDLED_POSES[0]), "--pose", str(BUNDLED_POSES[1]), "--out", str(tmp_path / "out")]
    assert main(command) == 0, capsys.readouterr().err
    assert len(list((tmp_path / "out" / "reposed_result").iterdir())) == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--source", "A", "B", "C", "D", "--pose", "P"], "mode multi-source: at most 3 source photo(s), got 4"),
        (["--source", "A", "--pose", "P", "Q", "R", "S"], "mode multi-target: at most 3 target pose(s), got 4"),
        (["--source", "A", "B", "--pose", "P", "Q"], "2 sources and 2 target poses: one pass takes several sources or several targets"),
        (["--source", "A", "--source-pose", "P", "--pose", "BLACK"], "BLACK: the pose has no person"),
        (["--source", "A", "--source-pose", "WIDE", "--pose", "P"], "WIDE: drawn on a 300x100 frame (aspect 3.00), but the source"),
    ],
)
def test_bad_input_is_one_line(extra, message, people, tmp_path, tiny_models, capsys):
    black, wide = tmp_path / "black.png", tmp_path / "wide.png"
    Image.new("RGB", (128, 192)).save(black)
    wide_map = np.zeros((100, 300, 3), np.uint8)
    wide_map[40:60, 100:200] = (255, 0, 0)
    Image.fromarray(wide_map).save(wide)
    names = {"A": people[0], "B": people[1], "C": people[0], "D": people[1], "P": BUNDLED_POSES[0], "Q": BUNDLED_POSES[1],
             "R": BUNDLED_POSES[0], "S": BUNDLED_POSES[1], "BLACK": black, "WIDE": wide}
    arguments = [str(names.get(a, a)) for a in extra]
    if "--source-pose" not in extra:
        arguments += ["--source-pose"] + [str(BUNDLED_POSES[0])] * (arguments.index("--pose") - 1)
    assert main(["imagpose", "generate", *arguments, "--out", str(tmp_path / "out"), *QUICK]) != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert message.replace("BLACK", str(black)).replace("WIDE", str(wide)) in err
    assert not (tmp_path / "out").exists()  # a run that fails its checks creates nothing
