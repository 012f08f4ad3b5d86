"""IMAGPose as published (``--profile reference``) beside the default: the loss weight's two
formulas, the published loader's draw, the published condition dropout, the published
initialisation and the image encoder's inputs; each on the tiny kit, through the command line
where a user meets it."""

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from oneposetrans.cli import main
from oneposetrans.datasets import read_keypoints_csv
from oneposetrans.imagpose.data import DataSettings, IdentityCanvases
from oneposetrans.imagpose.train import ImagPoseTrainer, VelocitySchedule, load_config
from oneposetrans.pose import BUNDLED_POSES
from oneposetrans.profiles import DEFAULT, REFERENCE
from oneposetrans.testing.mini_dataset import TINY_TRAINING as TINY, prepared_mini_deepfashion


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepared_mini_deepfashion(tmp_path_factory.mktemp("deepfashion"))


def _canvases(data, profile):
    images, keypoints = data / "fashion" / "train_highres", read_keypoints_csv(data / "fasion-resize-annotation-train.csv")
    return IdentityCanvases(images, keypoints, DataSettings(tile_long_side=64), seed=3, profile=profile)


def _trainer(tiny_models, data, output, phase=1, init=None, profile=REFERENCE, **settings):
    config = load_config(f"phase{phase}", init=str(init or tiny_models / "imagpose"), **(TINY | settings))
    return ImagPoseTrainer(config, data, output, cpu=True, echo=lambda line: None, profile=profile)


# --- the loss weight ----------------------------------------------------------------------


def test_both_loss_weights_at_timesteps_worked_by_hand():
    """SNR of the zero-terminal-SNR scaled-linear schedule at t = 0, 100, 500, 900, 999 is about
    1162, 7.83, 0.317, 0.0030 and 0; gamma 5. Min-SNR's min(SNR, 5) / (SNR + 1): 5/1163, 5/8.83,
    0.317/1.317, 0.0030/1.0030, 0. The published min(SNR + 1, 5) / (SNR + 1): the same two where
    SNR + 1 > 5, and 1 wherever SNR + 1 <= 5."""
    from oneposetrans.imagpose.checkpoint import training_scheduler

    schedule = VelocitySchedule(training_scheduler(), torch.device("cpu"))
    timesteps = torch.tensor([0, 100, 500, 900, 999])
    ours = schedule.min_snr_weights(timesteps, 5.0)
    published = schedule.min_snr_weights(timesteps, 5.0, plus_one=True)
    assert torch.allclose(ours, torch.tensor([0.0043, 0.5662, 0.2410, 0.0030, 0.0]), atol=1e-4), ours
    assert torch.allclose(published, torch.tensor([0.0043, 0.5662, 1.0, 1.0, 1.0]), atol=1e-4), published
    every = torch.arange(1000)
    differ = ~torch.isclose(schedule.min_snr_weights(every, 5.0), schedule.min_snr_weights(every, 5.0, plus_one=True))
    assert differ.sum().item() == 861


# --- the data -----------------------------------------------------------------------------


def test_the_published_draw_repeats_photos_and_masks_in_proportions_4_6_4(data):
    canvases = _canvases(data, REFERENCE)
    # The published draw needs two photos, not four: the outfit of 2 views trains too.
    assert sorted(len(identity.images) for identity in canvases.identities) == [2, 4, 5]
    masked, repeated, draws = Counter(), Counter(), Counter()
    for index in range(6000):
        draw = canvases.draw(index)
        photos = len(draw.identity.images)
        assert len(set(draw.images)) > 1 and all(0 <= i < photos for i in draw.images)
        assert draw.reference_tile is not None and draw.reference_tile not in draw.masked
        masked[len(draw.masked)] += 1
        draws[photos] += 1
        repeated[photos] += len(set(draw.images)) < 4
    shares = np.array([masked[k] for k in (1, 2, 3)]) / 6000
    assert np.allclose(shares, [4 / 14, 6 / 14, 4 / 14], atol=0.02), shares
    # P(a repeat | not all four the same) = 1 - (n)_4 / (n^4 - n): 1 for n = 2, 0.905 for 4, 0.806 for 5.
    for photos, expected in ((2, 1.0), (4, 0.905), (5, 0.806)):
        assert abs(repeated[photos] / draws[photos] - expected) < 0.03, (photos, repeated[photos] / draws[photos])
    default = _canvases(data, DEFAULT)
    assert all(len(set(default.draw(index).images)) == 4 for index in range(300))


def test_the_published_flc_reference_is_one_unflipped_photo(data):
    from transformers import CLIPImageProcessorPil

    canvases = _canvases(data, REFERENCE)
    index = next(i for i in range(100) if canvases.draw(i).flip)
    draw, sample = canvases.draw(index), canvases.sample(index)
    photo = Image.open(draw.identity.images[draw.images[draw.reference_tile]]).convert("RGB")
    cropped = CLIPImageProcessorPil()(images=photo, return_tensors="np").pixel_values[0]
    assert sample["views"] == 1 and list(sample["view_tiles"]) == [draw.reference_tile] * 3
    assert np.allclose(sample["encoder_pixels"][0], cropped, atol=1e-6)  # centre crop, before the flip
    reference = sample["reference"]
    assert reference.shape == (3, 64, 64) and reference.min() >= 0 and reference.max() <= 1  # [0, 1], as published
    assert "reference" not in _canvases(data, DEFAULT).sample(index)


def test_the_sampler_squashes_and_the_trainer_centre_crops():
    from oneposetrans.imagpose.pipeline_imagpose import IMAGE_MEAN, IMAGE_STD, encoder_pixels

    picture = Image.new("RGB", (176, 256), (0, 0, 0))
    picture.paste((255, 255, 255), (0, 0, 176, 16))  # a white band at the top: the head
    top = lambda pixels: (pixels * IMAGE_STD + IMAGE_MEAN)[:, :4, 80:144].mean()  # noqa: E731
    assert top(encoder_pixels(picture, "squashed")) > 0.9  # the whole height, squashed
    assert top(encoder_pixels(picture, "centre crop")) < 0.1  # the top cut off
    assert top(encoder_pixels(picture, "padded")) > 0.9
    with pytest.raises(ValueError, match="encoder input 'cropped'"):
        encoder_pixels(picture, "cropped")


# --- the condition dropout ----------------------------------------------------------------


def _spied_loss(trainer, batch):
    """The image encoder's input and the model's FLC arguments in one loss of ``batch``."""
    seen = {}
    encoder, model = trainer.image_encoder.forward, trainer.model.forward

    def encode(pixel_values, **kwargs):
        seen["pixels"] = pixel_values.clone()
        return encoder(pixel_values=pixel_values, **kwargs)

    def forward(sample, timesteps, image_tokens, tile_latents, views, drop, *rest):
        seen["tile_latents"], seen["drop"] = tile_latents.clone(), drop
        return model(sample, timesteps, image_tokens, tile_latents, views, drop, *rest)

    trainer.image_encoder.forward, trainer.model.forward = encode, forward
    trainer.loss(batch, torch.Generator().manual_seed(0))
    return seen


def test_published_dropout_zeroes_the_encoders_inputs(tiny_models, data, tmp_path):
    # Phase 1: the image only, for a whole batch at a time.
    trainer = _trainer(tiny_models, data, tmp_path / "p1", batch_drop_image=1.0, batch_size=2)
    batch = trainer.load_batch([0, 1])
    seen = _spied_loss(trainer, batch)
    assert seen["drop"] is None and torch.count_nonzero(seen["pixels"]) == 0 and torch.count_nonzero(seen["tile_latents"]) > 0
    trainer.config.batch_drop_image = 0.0
    seen = _spied_loss(trainer, batch)
    assert torch.count_nonzero(seen["pixels"]) > 0
    # Phases 2 and 3: the sample's draw, here the latent alone for every sample.
    trainer = _trainer(tiny_models, data, tmp_path / "p2", phase=2, drop_image_tokens=0.0, drop_latent_tokens=1.0, drop_both=0.0)
    seen = _spied_loss(trainer, trainer.load_batch([0]))
    assert seen["drop"] is None and torch.count_nonzero(seen["tile_latents"]) == 0 and torch.count_nonzero(seen["pixels"]) > 0
    # The default drops tokens, the sampler's null condition, and leaves the inputs alone.
    trainer = _trainer(tiny_models, data, tmp_path / "d2", phase=2, profile=DEFAULT, drop_image_tokens=0.0, drop_latent_tokens=1.0, drop_both=0.0)
    seen = _spied_loss(trainer, trainer.load_batch([0]))
    assert seen["drop"].tolist() == [[False, True]] and torch.count_nonzero(seen["tile_latents"]) > 0


# --- initialisation and the command line --------------------------------------------------


@pytest.mark.parametrize("profile", ["default", "reference"])
def test_init_follows_the_profile(profile, tiny_models, tmp_path, capsys):
    from safetensors.torch import load_file

    from oneposetrans.imagpose.checkpoint import load_pipeline
    from oneposetrans.imagpose.modules import CrossViewAttention

    out = tmp_path / "ckpt"
    assert main(["imagpose", "init", "--smoke", "--device", "cpu", "--profile", profile, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    motion_file = {"default": "animatediff-motion-v2/mm_sd_v15_v2.ckpt", "reference": "animateanyone-motion/motion_module.pth"}[profile]
    # 21 modules x 28 tensors (norm, proj_in, two attentions with their position tables, norms, ff, ff_norm, proj_out).
    assert f"{motion_file.split('/')[1]}: 588 keys loaded into the CVA modules, 0 of theirs not in the file, 0 of the file's not used" in printed
    pipeline = load_pipeline(out)
    stock = load_file(tiny_models / "stable-diffusion-v1-5" / "unet" / "diffusion_pytorch_model.safetensors")
    weight, bias = pipeline.unet.conv_in.weight.detach(), pipeline.unet.conv_in.bias.detach()
    assert weight.shape[1] == 9 and torch.equal(bias, stock["conv_in.bias"])
    stock_start = torch.equal(weight[:, :4], stock["conv_in.weight"]) and torch.count_nonzero(weight[:, 4:]) == 0
    assert stock_start == (profile == "default")  # reference: a fresh weight, as ignore_mismatched_sizes leaves it
    assert pipeline.scheduler.config.prediction_type == "v_prediction" and pipeline.scheduler.config.rescale_betas_zero_snr
    assert pipeline.scheduler.config.set_alpha_to_one == (profile == "reference")
    expected = CrossViewAttention.from_config(pipeline.cross_view_attention.config)
    expected.load_state_dict(torch.load(tiny_models / motion_file, weights_only=True))
    for name, tensor in expected.state_dict().items():
        assert torch.equal(pipeline.cross_view_attention.state_dict()[name], tensor), name


def test_generate_and_train_run_the_reference_profile(tiny_models, data, tmp_path, capsys, monkeypatch):
    from oneposetrans.imagpose import pipeline_imagpose

    fits = []
    original = pipeline_imagpose.encoder_pixels
    monkeypatch.setattr(pipeline_imagpose, "encoder_pixels", lambda picture, fit="padded": fits.append(fit) or original(picture, fit))
    photo = tmp_path / "me.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (192, 128, 3), dtype=np.uint8)).save(photo)
    common = ["--smoke", "--quiet", "--device", "cpu"]
    generate = ["imagpose", "generate", *common, "--steps", "1", "--source", str(photo), "--source-pose", str(BUNDLED_POSES[0]), "--pose", str(BUNDLED_POSES[1])]
    assert main([*generate, "--profile", "reference", "--out", str(tmp_path / "ref")]) == 0, capsys.readouterr().err
    assert main([*generate, "--out", str(tmp_path / "default")]) == 0, capsys.readouterr().err
    assert fits == ["squashed", "padded"]
    train = ["imagpose", "train", *common, "--config", "phase1", "--data", str(data), "--max-steps", "1", "--tile", "64", "--workers", "0"]
    assert main([*train, "--profile", "reference", "--output", str(tmp_path / "run")]) == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "checkpoint-1" / "training_state.pt").is_file()


@pytest.fixture(scope="module")
def reference_runs(tiny_models, data, tmp_path_factory):
    """The three phases in the reference profile, 20 steps each from the previous one's checkpoint,
    the loss before and after on 8 samples under 4 noise draws. The published weights give the
    noisiest timesteps weight 1, so a one-canvas step is a noisy one: phase 3, which moves every
    module, takes 4 canvases a step at a lower rate (its published rate is the lowest too)."""
    runs, init = {}, None
    for phase, learning_rate, batch_size in ((1, 2e-3, 1), (2, 2e-3, 1), (3, 5e-4, 4)):
        output = tmp_path_factory.mktemp(f"reference{phase}")
        trainer = _trainer(
            tiny_models, data, output, phase, init=init, max_steps=20, checkpoint_every=20, learning_rate=learning_rate, batch_size=batch_size
        )
        loss = lambda: np.mean([trainer.fixed_batch_loss(list(range(8)), seed) for seed in range(4)])  # noqa: E731
        before = loss()
        init = trainer.train()
        runs[phase] = (before, loss())
    return runs


@pytest.mark.parametrize("phase", [1, 2, 3])
def test_each_reference_phase_lowers_the_loss(reference_runs, phase):
    before, after = reference_runs[phase]
    assert after < before
