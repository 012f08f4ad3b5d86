"""IMAGPose training throughput, beside a stock diffusers training step in the same run (not a test).

    python bench/imagpose_train_bench.py                 # tiny kit on the CPU: proves the script
    python bench/imagpose_train_bench.py --full-scale    # CUDA, bf16: SD1.5-size UNet, sd-vae-ft-mse, DINOv2-base

Full scale: the UNet, VAE and image encoder built from ``bench/configs/`` (the published
configs) with random weights (compute does not depend on weight values), written as an IMAGPose
checkpoint folder that :class:`ImagPoseTrainer` loads, as ``imagpose train`` does. Each phase is
timed over ``--steps`` optimizer steps after ``--warmup``: the step (VAE and DINOv2 encodes, the
9-channel UNet with the pose encoder and, in phases 2 and 3, CVA, AdamW on the phase's weights,
gradient clipping) with the batch already loaded, and the data loading per sample on one CPU
worker, which ``imagpose train --workers`` overlaps with the steps.

The stock step is diffusers' text-to-image training step at the same canvas and batch: VAE encode,
the stock 4-channel SD1.5 UNet with a context as long as a two-view IMAGPose context, MSE,
AdamW over the whole UNet. Printed: samples/s, peak GPU memory, ours / stock.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import oneposetrans  # noqa: F401  (sets HF_HUB_OFFLINE before the hub libraries load)
import torch

from oneposetrans.imagpose.checkpoint import build_modules, modules_config, save_checkpoint, training_scheduler
from oneposetrans.imagpose.train import ImagPoseTrainer, load_config
from oneposetrans.imagpose.unet import widen_conv_in
from oneposetrans.profiles import PROFILES, Profile
from oneposetrans.testing import cached_tiny_models
from oneposetrans.testing.tiny import _tiny_sd_vae, IMAGPOSE_UNET

CONFIGS = Path(__file__).parent / "configs"


def _config(name: str) -> dict:
    return {k: v for k, v in json.loads((CONFIGS / name).read_text()).items() if not k.startswith("_")}


def full_size_checkpoint(folder: Path) -> Path:
    """An IMAGPose checkpoint of the published shapes with random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import Dinov2Config, Dinov2Model

    unet = UNet2DConditionModel(**_config("sd15_unet.json"))
    widen_conv_in(unet)
    image_encoder = Dinov2Model(Dinov2Config(**_config("dinov2_base.json")))
    added = build_modules(modules_config(unet, image_encoder))
    vae = AutoencoderKL(**_config("sd_vae_ft_mse.json"))
    return save_checkpoint(folder, {"vae": vae, "unet": unet, "image_encoder": image_encoder, "scheduler": training_scheduler(), **added})


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_phase(
    checkpoint: Path, data: Path, phase: int, tile: int, batch: int, steps: int, warmup: int, precision: str, cpu: bool, profile: Profile
) -> dict:
    config = load_config(f"phase{phase}", init=str(checkpoint), tile_long_side=tile, batch_size=batch, workers=0, mixed_precision=precision)
    trainer = ImagPoseTrainer(config, data, data / "bench-output", cpu=cpu, echo=lambda line: None, profile=profile)
    device, accelerator = trainer.device, trainer.accelerator
    data_seconds, batches = [], []
    for step in range(warmup + steps):
        started = time.perf_counter()
        batches.append(trainer.load_batch(trainer.batch_indices(step, 0)))
        data_seconds.append((time.perf_counter() - started) / batch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_seconds = []
    for step, loaded in enumerate(batches):
        _sync(device)
        started = time.perf_counter()
        generator = torch.Generator(device).manual_seed(step)
        loss = trainer.loss(loaded, generator)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(trainer.trainable, config.max_grad_norm)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        _sync(device)
        if step >= warmup:
            step_seconds.append(time.perf_counter() - started)
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    step = statistics.median(step_seconds)
    result = {
        "phase": phase, "samples_per_s": batch / step, "step_s": step, "data_s_per_sample": statistics.median(data_seconds),
        "peak_memory_gib": memory, "trained_parameters_m": trainer.trained_parameters / 1e6,
        "canvas": [2 * x for x in trainer.canvases.tile], "gradient_checkpointing": config.gradient_checkpointing,
    }
    del trainer, batches
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def time_stock(
    unet_config: dict, vae, canvas: tuple[int, int], context: tuple[int, int], batch: int, steps: int, warmup: int, device: torch.device,
    precision: str, checkpointing: bool,
) -> dict:
    """diffusers' text-to-image training step on the stock UNet at the same canvas (with its
    ``--gradient_checkpointing`` when the phases use it)."""
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, UNet2DConditionModel

    unet = UNet2DConditionModel(**unet_config).to(device).train()
    if checkpointing:
        unet.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=5e-5, weight_decay=0.01)
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    width, height = canvas
    pixels = torch.randn(batch, 3, height, width, device=device, dtype=vae.dtype)
    states = torch.randn(batch, *context, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for step in range(warmup + steps):
        _sync(device)
        started = time.perf_counter()
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample().float() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, 1000, (batch,), device=device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            prediction = unet(scheduler.add_noise(latents, noise, timesteps), timesteps, states).sample
        F.mse_loss(prediction.float(), noise).backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        if step >= warmup:
            seconds.append(time.perf_counter() - started)
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    step = statistics.median(seconds)
    del unet, optimizer
    return {"samples_per_s": batch / step, "step_s": step, "peak_memory_gib": memory}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-scale", action="store_true", help="published shapes on CUDA (bf16)")
    parser.add_argument("--phases", default="1,2,3")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per phase (default: 20 full scale, 5 tiny)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=None, help="canvases per step (default: 2 full scale, 1 tiny)")
    parser.add_argument("--tile", type=int, default=None, help="tile long side (default: 512 full scale, 64 tiny)")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="default", help="the training's profile (its data draw and conditions)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    arguments = parser.parse_args()
    if arguments.full_scale and not torch.cuda.is_available():
        print("full-scale benchmark skipped: no CUDA device on this machine")
        return 0

    from diffusers import AutoencoderKL

    from oneposetrans.testing.mini_dataset import prepared_mini_deepfashion

    full = arguments.full_scale
    steps = arguments.steps or (20 if full else 5)
    batch = arguments.batch or (2 if full else 1)
    tile = arguments.tile or (512 if full else 64)
    precision = "bf16" if full else "no"
    device = torch.device("cuda" if full else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prepared_mini_deepfashion(tmp / "data")
        if full:
            started = time.perf_counter()
            checkpoint = full_size_checkpoint(tmp / "checkpoint")
            print(f"full-size checkpoint written in {time.perf_counter() - started:.0f} s")
            unet_config = _config("sd15_unet.json")
            vae = AutoencoderKL(**_config("sd_vae_ft_mse.json"))
            width, tokens = 768, 2 * (257 + (tile // 8 // 16) * (tile * 3 // 4 // 8 // 16))
        else:
            checkpoint = cached_tiny_models() / "imagpose"
            unet_config, vae = dict(IMAGPOSE_UNET), _tiny_sd_vae()
            width, tokens = IMAGPOSE_UNET["cross_attention_dim"], 2 * (257 + 1)
        vae = vae.to(device, torch.bfloat16 if full else torch.float32).eval().requires_grad_(False)
        name = torch.cuda.get_device_name(device) if full else f"CPU, {torch.get_num_threads()} threads"
        started = time.perf_counter()

        def keep(what: str, figures: dict) -> None:
            """A line per figure, and the JSON rewritten, so a run cut short keeps what it measured."""
            print(f"[{time.perf_counter() - started:5.0f} s] {what}: {figures['samples_per_s']:.2f} samples/s", flush=True)
            if arguments.json:
                arguments.json.write_text(json.dumps({"device": name, "profile": arguments.profile, "stock": stock, "phases": phases}, indent=2) + "\n")

        phases, stock = [], None
        for phase in arguments.phases.split(","):
            phases.append(
                time_phase(checkpoint, tmp / "data", int(phase), tile, batch, steps, arguments.warmup, precision, not full, PROFILES[arguments.profile])
            )
            keep(f"phase {phase}", phases[-1])
        canvas = tuple(phases[0]["canvas"])
        stock = time_stock(
            unet_config, vae, canvas, (tokens, width), batch, steps, arguments.warmup, device, precision, phases[0]["gradient_checkpointing"]
        )
        keep("stock diffusers step", stock)

    print(
        f"{'full scale' if full else 'tiny kit'}, {name}, canvas {canvas[0]}x{canvas[1]}, batch {batch}, {steps} timed steps, "
        f"precision {precision}, profile {arguments.profile}, gradient checkpointing as the bundled configs"
    )
    memory = lambda value: f", {value:.1f} GiB peak" if value is not None else ""  # noqa: E731
    print(f"  stock diffusers step: {stock['samples_per_s']:.2f} samples/s ({stock['step_s'] * 1000:.0f} ms/step{memory(stock['peak_memory_gib'])})")
    for result in phases:
        print(
            f"  phase {result['phase']} ({result['trained_parameters_m']:.0f} M trained): {result['samples_per_s']:.2f} samples/s "
            f"({result['step_s'] * 1000:.0f} ms/step{memory(result['peak_memory_gib'])}), "
            f"{result['samples_per_s'] / stock['samples_per_s']:.2f}x stock; data {result['data_s_per_sample'] * 1000:.0f} ms/sample on one worker"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
