"""IMAGPose training on the tiny kit: the three phases train what they should, a resumed run is
bit-identical to an uninterrupted one, two processes share the data with one checkpoint writer,
the data sampler keeps its promises, and a trained checkpoint runs every mode."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from oneposetrans.cli import main
from oneposetrans.errors import BadInputError
from oneposetrans.imagpose.data import DataSettings, IdentityCanvases, identity_of, mirror_keypoints
from oneposetrans.imagpose.train import (
    ImagPoseTrainer, TRAINING_STATE, VelocitySchedule, checkpoints, load_config, micro_batch_indices,
)
from oneposetrans.datasets import read_keypoints_csv
from tests.conftest import REPO
from oneposetrans.testing.mini_dataset import TINY_TRAINING as TINY, prepared_mini_deepfashion


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepared_mini_deepfashion(tmp_path_factory.mktemp("deepfashion"))


def _trainer(tiny_models, data, output, phase=1, init=None, resume=None, **settings):
    config = load_config(f"phase{phase}", init=str(init or tiny_models / "imagpose"), **(TINY | settings))
    return ImagPoseTrainer(config, data, output, resume=resume, cpu=True, echo=lambda line: None)


def _weights(trainer) -> dict[str, torch.Tensor]:
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {name: p.detach().float().clone() for name, p in model.named_parameters()}


def _group(name: str) -> str:
    if name.startswith("denoiser.cva."):
        return "cross_view_attention"
    return name.split(".")[1] if name.startswith("denoiser.") else "feature_tokenizer"


@pytest.fixture(scope="module")
def phase_runs(tiny_models, data, tmp_path_factory):
    """Each phase, 20 steps from the previous one's checkpoint (phase 1 from the kit's), at a
    learning rate a tiny model moves at: weights before and after, loss on a fixed batch."""
    runs, init = {}, None
    for phase in (1, 2, 3):
        output = tmp_path_factory.mktemp(f"phase{phase}")
        trainer = _trainer(tiny_models, data, output, phase, init=init, max_steps=20, checkpoint_every=20, learning_rate=2e-3)
        before, loss_before = _weights(trainer), trainer.fixed_batch_loss([0, 1, 2, 3])
        last = trainer.train()
        runs[phase] = {
            "before": before, "after": _weights(trainer), "loss_before": loss_before,
            "loss_after": trainer.fixed_batch_loss([0, 1, 2, 3]), "checkpoint": last, "init": trainer.source,
        }
        init = last
    return runs


@pytest.mark.parametrize("phase", [1, 2, 3])
def test_each_phase_lowers_the_loss_on_a_fixed_batch(phase_runs, phase):
    run = phase_runs[phase]
    assert run["loss_after"] < run["loss_before"]


@pytest.mark.parametrize(
    "phase, trained",
    [
        (1, {"unet", "pose_encoder", "feature_tokenizer"}),
        (2, {"cross_view_attention"}),
        (3, {"unet", "pose_encoder", "feature_tokenizer", "cross_view_attention"}),
    ],
)
def test_each_phase_updates_exactly_its_modules(phase_runs, phase, trained):
    run = phase_runs[phase]
    changed: dict[str, list[bool]] = {}
    for name, before in run["before"].items():
        changed.setdefault(_group(name), []).append(not torch.equal(before, run["after"][name]))
    for group, flags in changed.items():
        if group in trained:
            # Zero-initialised tensors whose gradient stays zero (unused view embeddings) may not move.
            assert np.mean(flags) > 0.9, (group, np.mean(flags))
        else:
            assert not any(flags), f"phase {phase} changed the frozen {group}"


def test_frozen_parts_are_written_bit_for_bit_from_the_starting_checkpoint(phase_runs):
    run = phase_runs[2]
    weights = "cross_view_attention/diffusion_pytorch_model.safetensors"
    start, end = load_file(run["init"] / weights), load_file(run["checkpoint"] / weights)
    assert start.keys() == end.keys() and not all(torch.equal(start[key], end[key]) for key in start)
    for part in ("unet", "vae", "image_encoder", "pose_encoder", "feature_tokenizer", "scheduler", "model_index.json"):
        if part == "model_index.json":
            assert (run["checkpoint"] / part).read_bytes() == (run["init"] / part).read_bytes()
            continue
        files = sorted(p.relative_to(run["init"] / part) for p in (run["init"] / part).rglob("*") if p.is_file())
        for name in files:
            assert (run["checkpoint"] / part / name).read_bytes() == (run["init"] / part / name).read_bytes()


def test_a_resumed_run_equals_an_uninterrupted_one_bit_for_bit(tiny_models, data, tmp_path):
    whole = _trainer(tiny_models, data, tmp_path / "whole", max_steps=20, checkpoint_every=10).train()
    first = _trainer(tiny_models, data, tmp_path / "stopped", max_steps=10, checkpoint_every=10).train()
    assert first.name == "checkpoint-10"
    resumed = _trainer(tiny_models, data, tmp_path / "stopped", max_steps=20, checkpoint_every=10, resume=first)
    assert resumed.step == 10
    last = resumed.train()
    for part in (
        "pose_encoder/diffusion_pytorch_model.safetensors", "feature_tokenizer/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
    ):
        assert (last / part).read_bytes() == (whole / part).read_bytes(), part
    a = torch.load(last / TRAINING_STATE, weights_only=True)
    b = torch.load(whole / TRAINING_STATE, weights_only=True)
    assert a["step"] == b["step"] == 20
    for index, state in a["optimizer"]["state"].items():
        assert all(torch.equal(state[k], b["optimizer"]["state"][index][k]) for k in state)


def test_a_failed_save_leaves_the_last_checkpoint_and_no_folder_that_looks_finished(tiny_models, data, tmp_path, monkeypatch):
    from oneposetrans.imagpose import train

    trainer = _trainer(tiny_models, data, tmp_path, max_steps=4, checkpoint_every=2)

    def killed(folder, state, record):
        if folder.name.startswith(".checkpoint-4"):
            raise KeyboardInterrupt
        return original(folder, state, record)

    original = train._write_training_state
    monkeypatch.setattr(train, "_write_training_state", killed)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-2"]
    assert not (tmp_path / "checkpoint-4").exists()


def test_processes_take_disjoint_slices_of_every_step():
    for step in range(3):
        for micro in range(2):
            slices = [micro_batch_indices(step, micro, 2, 4, process, 3) for process in range(4)]
            flat = sorted(i for s in slices for i in s)
            assert flat == list(range((step * 2 + micro) * 12, (step * 2 + micro + 1) * 12))


@pytest.mark.e2e
def test_two_processes_train_with_one_checkpoint_writer(data, tmp_path, cli_env):
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
    ]
    command = ["-m", "oneposetrans", "imagpose", "train", "--smoke", "--quiet", "--config", "phase1", "--data", str(data),
               "--output", str(tmp_path), "--max-steps", "4", "--checkpoint-every", "2", "--log-every", "2",
               "--tile", "64", "--batch-size", "1", "--workers", "0"]
    ran = subprocess.run([*launch, *command], cwd=REPO, env={**cli_env, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-4"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial or replaced folders
    records = [json.loads(line) for line in (tmp_path / "logs" / "train.jsonl").read_text().splitlines()]
    assert [r.get("event") for r in records if "event" in r] == ["started"]  # one writer
    assert records[0]["processes"] == 2
    assert [r["step"] for r in records if "loss" in r] == [2, 4]
    assert ran.stdout.count("checkpoint ") == 2


def test_the_trained_checkpoint_runs_every_mode_in_imagpose_generate(phase_runs, tmp_path, capsys):
    from PIL import Image

    from oneposetrans.pose import BUNDLED_POSES

    checkpoint = phase_runs[3]["checkpoint"]
    photos = []
    for index in range(2):
        photos.append(tmp_path / f"view{index}.png")
        Image.fromarray(np.random.default_rng(index).integers(0, 255, (192, 128, 3), dtype=np.uint8)).save(photos[-1])
    for mode, sources, poses in (("t1", 1, 1), ("t2", 1, 1), ("multi-target", 1, 2), ("multi-source", 2, 1)):
        out = tmp_path / mode
        command = ["imagpose", "generate", "--smoke", "--quiet", "--device", "cpu", "--steps", "2", "--checkpoint", str(checkpoint),
                   "--source", *map(str, photos[:sources]), "--source-pose", *[str(BUNDLED_POSES[0])] * sources,
                   "--pose", *map(str, BUNDLED_POSES[:poses]), "--mode", mode, "--out", str(out)]
        assert main(command) == 0, capsys.readouterr().err
        assert len(list((out / "reposed_result").iterdir())) == poses


# --- the objective ------------------------------------------------------------------------


def test_the_velocity_schedule_is_the_schedulers(tiny_models):
    from oneposetrans.imagpose.checkpoint import training_scheduler

    scheduler = training_scheduler()
    schedule = VelocitySchedule(scheduler, torch.device("cpu"))
    latents, noise = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    timesteps = torch.tensor([0, 250, 600, 999])
    noisy, target = schedule.noisy_and_target(latents, noise, timesteps)
    assert torch.allclose(noisy, scheduler.add_noise(latents, noise, timesteps), atol=1e-6)
    assert torch.allclose(target, scheduler.get_velocity(latents, noise, timesteps), atol=1e-6)
    snr = scheduler.alphas_cumprod[timesteps] / (1 - scheduler.alphas_cumprod[timesteps])
    assert torch.allclose(schedule.min_snr_weights(timesteps, 5.0), torch.minimum(snr, torch.tensor(5.0)) / (snr + 1), atol=1e-6)
    assert schedule.min_snr_weights(torch.tensor([999]), 5.0).item() == 0  # zero terminal SNR


def test_padded_views_under_the_mask_change_nothing_and_the_null_condition_is_zero_tokens(tiny_models):
    from oneposetrans.imagpose.checkpoint import load_pipeline
    from oneposetrans.imagpose.pipeline_imagpose import flc_context

    pipeline = load_pipeline(tiny_models / "imagpose")
    tokenizer, denoiser = pipeline.feature_tokenizer, pipeline.denoiser
    width = tokenizer.projection.in_features
    torch.manual_seed(0)
    image_tokens, latents = torch.randn(1, 3, 5, width), torch.randn(1, 3, 4, 8, 8)
    alone, none = flc_context(tokenizer, image_tokens[:, :1], latents[:, :1])
    padded, mask = flc_context(tokenizer, image_tokens, latents, views=torch.tensor([1]))
    assert none is None and mask.sum().item() == alone.shape[1]
    sample, pose = torch.randn(1, 9, 16, 16), torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        expected = denoiser(sample, 500, alone, pose=pose)
        got = denoiser(sample, 500, padded, pose=pose, context_mask=mask)
    assert torch.allclose(expected, got, atol=1e-5)
    dropped, _ = flc_context(tokenizer, image_tokens, latents, drop=torch.tensor([[True, True]]))
    assert torch.equal(dropped, torch.zeros_like(dropped))  # what the sampler's unconditional branch uses
    only_image, _ = flc_context(tokenizer, image_tokens, latents, drop=torch.tensor([[True, False]]))
    full, _ = flc_context(tokenizer, image_tokens, latents)
    per_view = only_image.view(1, 3, -1, only_image.shape[-1])
    assert torch.equal(per_view[:, :, :5], torch.zeros_like(per_view[:, :, :5]))
    assert torch.equal(per_view[:, :, 5:], full.view_as(per_view)[:, :, 5:])


# --- the data -----------------------------------------------------------------------------


def test_samples_are_four_distinct_photos_of_one_identity_with_one_to_three_masked(data):
    canvases = IdentityCanvases(data / "fashion" / "train_highres", read_keypoints_csv(data / "fasion-resize-annotation-train.csv"), DataSettings(tile_long_side=64), seed=1)
    assert len(canvases) == 2 and canvases.left_out["identities with fewer than 4 photos"] == 1
    counts = {"image": 0, "latent": 0, "both": 0}
    masked_sizes = set()
    for index in range(4000):
        draw = canvases.draw(index)
        assert len(set(draw.images)) == 4 and {identity_of(draw.identity.images[i].stem) for i in draw.images} == {draw.identity.name}
        assert 1 <= len(draw.masked) <= 3
        masked_sizes.add(len(draw.masked))
        key = "both" if draw.drop_image_tokens and draw.drop_latent_tokens else "image" if draw.drop_image_tokens else "latent" if draw.drop_latent_tokens else None
        if key:
            counts[key] += 1
    assert masked_sizes == {1, 2, 3}
    assert all(150 < count < 250 for count in counts.values()), counts  # 5 % each
    sample = canvases.sample(7)
    draw = canvases.draw(7)
    assert sample["canvas"].shape == (3, 128, 128) and sample["pose"].max() > 0.5
    assert sample["views"] == 4 - len(draw.masked) and list(sample["flags"]).count(0.0) == len(draw.masked)
    assert np.array_equal(canvases.sample(7)["canvas"], sample["canvas"])  # a function of the index


def test_a_flipped_pose_mirrors_x_and_swaps_left_and_right():
    points = np.full((18, 2), np.nan)
    points[2] = (10, 50)  # right shoulder
    points[5] = (60, 50)  # left shoulder
    mirrored = mirror_keypoints(points, 176)
    assert tuple(mirrored[2]) == (115, 50) and tuple(mirrored[5]) == (165, 50)


def test_config_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("phase: 1\nlearning_rat: 1e-4\n")
    with pytest.raises(BadInputError, match="unknown setting.*learning_rat"):
        load_config(bad)
    bad.write_text("phase: 4\n")
    with pytest.raises(BadInputError, match="phases 1, 2 and 3"):
        load_config(bad)
    with pytest.raises(BadInputError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")


def test_the_bundled_configs_are_the_papers_phases():
    one, two, three = (load_config(f"phase{p}") for p in (1, 2, 3))
    assert (one.learning_rate, one.max_steps, one.trained, one.runs_cva) == (5e-5, 50_000, ("unet", "pose_encoder", "feature_tokenizer"), False)
    assert (two.learning_rate, two.max_steps, two.trained, two.runs_cva) == (5e-5, 200_000, ("cross_view_attention",), True)
    assert (three.learning_rate, three.max_steps, three.runs_cva) == (1e-6, 50_000, True)
    assert (one.weight_decay, one.max_grad_norm, one.min_snr_gamma, one.noise_offset) == (0.01, 1.0, 5.0, 0.05)
    assert one.gradient_checkpointing and two.gradient_checkpointing and three.gradient_checkpointing  # as the published configs


def test_smoke_training_needs_no_data_folder(tmp_path, tiny_models, capsys):
    """--smoke brings a synthetic mini split (built once in the cache), and says what it loads."""
    output = tmp_path / "run"
    command = ["imagpose", "train", "--smoke", "--device", "cpu", "--config", "phase1", "--output", str(output), "--max-steps", "1", "--tile", "64", "--workers", "0"]
    assert main(command) == 0, capsys.readouterr().err
    assert (output / "checkpoint-1" / TRAINING_STATE).is_file() and "loading " in capsys.readouterr().out
    assert main(["imagpose", "train", "--config", "phase1", "--output", str(tmp_path / "none")]) == 1
    assert "needs --data DIR" in capsys.readouterr().err


def test_training_into_a_folder_with_checkpoints_needs_resume(data, tmp_path, tiny_models, capsys):
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / TRAINING_STATE).write_bytes(b"")
    command = ["imagpose", "train", "--smoke", "--config", "phase1", "--data", str(data), "--output", str(tmp_path), "--max-steps", "1"]
    assert main(command) == 1
    assert "already has checkpoint-3: pass --resume" in capsys.readouterr().err
