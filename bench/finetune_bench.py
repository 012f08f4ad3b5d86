"""Fine-tuning benchmarks (not tests).

    python bench/finetune_bench.py                 # tiny kit, CPU: our per-case wall time vs a bare loop
    python bench/finetune_bench.py --full-scale    # full-size SDXL from its configs, random weights, GPU

Tiny: both paths load the models once, then train the same cases (60 steps, batch 2, same
crop size); the ratio is our per-case wall time (image reading, augmentation, adapter set-up
and removal, atomic save, logging) over the bare diffusers/peft loop's. Target: <= 1.2x.

Full scale: one case of the published recipe (60 steps, batch 2, 512x512 crops, rank 32) on
the SDXL UNet and VAE built from bench/configs (random weights: compute does not depend on
weight values). Reports seconds per case with model load excluded, seconds per step and peak
GPU memory. Skips cleanly without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import oneposetrans  # noqa: F401  (sets HF_HUB_OFFLINE before the hub libraries load)
import torch

from oneposetrans.finetune import FinetuneCase, FinetuneSettings, FinetuneStage, LoraTrainer
from oneposetrans.results import ResultsTree
from oneposetrans.session import Session
from oneposetrans.stages import run_stage
from oneposetrans.testing import cached_tiny_models

CONFIGS = Path(__file__).parent / "configs"
CAPTION = "A woman with face, orange spacesuit with mission patches"


def _photo(folder: Path) -> Path:
    from PIL import Image
    from skimage import data

    path = folder / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


def bare_loop(components: dict, photo: Path, steps: int, resolution: int, out: Path) -> float:
    """The stock recipe written plainly: what a diffusers user would write for one LoRA."""
    import torch.nn.functional as F
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from PIL import Image
    from torchvision import transforms

    unet, vae, scheduler = components["unet"], components["vae"], components["noise_scheduler"]
    embeds, pooled = components["caption_embeds"]
    started = time.perf_counter()
    torch.manual_seed(0)
    unet.add_adapter(
        LoraConfig(r=32, lora_alpha=32, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"]),
        adapter_name="bare",
    )
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)
    augment = transforms.Compose(
        [transforms.Resize(resolution), transforms.RandomCrop(resolution), transforms.ToTensor(), transforms.Normalize([0.5], [0.5])]
    )
    image = Image.open(photo).convert("RGB")
    time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]] * 2, dtype=torch.float32)
    for _ in range(steps):
        pixels = torch.stack([augment(image), augment(image)])
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, 1000, (2,))
        prediction = unet(
            scheduler.add_noise(latents, noise, timesteps),
            timesteps,
            encoder_hidden_states=embeds.expand(2, -1, -1),
            added_cond_kwargs={"text_embeds": pooled.expand(2, -1), "time_ids": time_ids},
        ).sample
        F.mse_loss(prediction, noise).backward()
        optimizer.step()
        optimizer.zero_grad()
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name="bare"))
    StableDiffusionXLPipeline.save_lora_weights(out, unet_lora_layers=state, weight_name="bare.safetensors")
    unet.delete_adapters("bare")
    return time.perf_counter() - started


def tiny(cases: int, resolution: int) -> None:
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    models = cached_tiny_models()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photo = _photo(tmp)
        settings = FinetuneSettings(resolution=resolution)
        session = Session(models, "cpu", echo=lambda _: None)
        trainer = session.trainer(settings)
        components = {
            "unet": trainer.unet,
            "vae": trainer.vae,
            "noise_scheduler": trainer.noise_scheduler,
            "caption_embeds": trainer.encode_caption(CAPTION),
        }
        ours, bare = [], []
        for index in range(cases):
            # Interleaved so that machine noise hits both paths alike.
            bare.append(bare_loop(components, photo, settings.steps, resolution, tmp))
            tree = ResultsTree(tmp / f"results{index}")
            started = time.perf_counter()
            run_stage(
                FinetuneStage(tree, settings), [FinetuneCase("a", [photo], CAPTION)], session, tree.log("finetune"),
                echo=lambda _: None, progress=False,
            )
            ours.append(time.perf_counter() - started)
    ours_median, bare_median = statistics.median(ours), statistics.median(bare)
    print(f"tiny kit, CPU, {cases} cases, 60 steps, batch 2, {resolution}px crops, models loaded once")
    print(f"  oneposetrans finetune stage: median {ours_median:.2f} s/case  {[round(x, 2) for x in ours]}")
    print(f"  bare diffusers/peft loop:  median {bare_median:.2f} s/case  {[round(x, 2) for x in bare]}")
    print(f"  overhead ratio (ours / bare): {ours_median / bare_median:.2f}x  (target <= 1.20x)")


def full_scale(dtype_name: str, steps: int, device_name: str, repeats: int) -> int:
    if device_name == "cuda" and not torch.cuda.is_available():
        print("full-scale benchmark skipped: no CUDA device on this machine")
        return 0
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    device = torch.device(device_name)
    started = time.perf_counter()
    config = lambda name: {k: v for k, v in json.loads((CONFIGS / name).read_text()).items() if not k.startswith("_")}
    text = config("clip_text_encoders.json")
    tokenizer_dir = cached_tiny_models() / "RealVisXL_V4.0"  # the real CLIP BPE, shared by both encoders
    with torch.device(device):
        components = {
            "unet": UNet2DConditionModel(**config("sdxl_unet.json")),
            "vae": AutoencoderKL(**config("sdxl_vae.json")),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**text["text_encoder"])),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**text["text_encoder_2"])),
        }
    components["tokenizer"] = CLIPTokenizer.from_pretrained(tokenizer_dir, subfolder="tokenizer")
    components["tokenizer_2"] = CLIPTokenizer.from_pretrained(tokenizer_dir, subfolder="tokenizer_2")
    components["noise_scheduler"] = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    settings = FinetuneSettings(mixed_precision=dtype_name, steps=steps)
    trainer = LoraTrainer(components, settings, device)
    print(f"built full-size SDXL UNet/VAE/text encoders in {time.perf_counter() - started:.1f} s (excluded below)")
    with tempfile.TemporaryDirectory() as tmp:
        photo = _photo(Path(tmp))
        warm = FinetuneSettings(mixed_precision=dtype_name, steps=min(3, steps))
        trainer.settings = warm
        trainer.train(FinetuneCase("warmup", [photo], CAPTION))
        trainer.discard()
        trainer.settings = settings
        results = []
        for _ in range(repeats):
            trained = trainer.train(FinetuneCase("a", [photo], CAPTION))
            trainer.save(Path(tmp) / "a.safetensors")
            results.append(trained)
    seconds = statistics.median(r.seconds for r in results)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (plumbing check only)"
    print(f"device: {name}, torch {torch.__version__}, precision {dtype_name}")
    print(f"  {steps} steps, batch 2, 512x512: median {seconds:.2f} s/case ({seconds / steps * 1000:.0f} ms/step), "
          f"peak {max(r.peak_memory_mb for r in results) / 1024:.1f} GiB; paper: ~48 s/case on a V100; target <= 6 s on H100")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full-scale", action="store_true", help="full-size SDXL on the GPU")
    parser.add_argument("--cases", type=int, default=3, help="tiny: cases per path")
    parser.add_argument("--resolution", type=int, default=128, help="tiny: crop size")
    parser.add_argument("--precision", choices=("fp16", "bf16", "no"), default="fp16", help="full scale: mixed precision")
    parser.add_argument("--device", default="cuda", help="full scale: device (cpu only checks the plumbing, slowly)")
    parser.add_argument("--repeats", type=int, default=3, help="full scale: timed cases")
    parser.add_argument("--steps", type=int, default=60, help="full scale: steps per case")
    arguments = parser.parse_args()
    if arguments.full_scale:
        return full_scale(arguments.precision, arguments.steps, arguments.device, arguments.repeats)
    tiny(arguments.cases, arguments.resolution)
    return 0


if __name__ == "__main__":
    sys.exit(main())
