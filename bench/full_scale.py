"""The whole case at full size, timed on a GPU beside stock diffusers in the same run (not a test).

    python bench/full_scale.py [--json FILE] [--only PART,...] [--repeats N]   # CUDA: full size, bf16
    python bench/full_scale.py --plumbing           # CPU, tiny shapes: checks this script end to end

Parts (default: all): published, fast, captured (the training steps); stock, eager, compiled,
reference (generation); decoder (the transparent decoder alone).

On a lent GPU machine (no registry, no diffusers): ``../shared/tools/device-prep`` first, then the
line it prints before this command (BENCHMARKS.md lists the wheels the device lacks). Of the tiny
kit only the SDXL tokenizers and scheduler and the antelopev2 face files are built (seconds); a
line is printed and the JSON rewritten after every figure, so a run cut short keeps what it
measured.

Full size: the SDXL UNet, VAE and text encoders from ``bench/configs/``, the OpenPose ControlNet
derived from that UNet, CLIP ViT-H/14 as IP-Adapter's image encoder, and the IP-Adapter,
InstantID and LayerDiffuse files written in their published formats and full-size shapes, all
with random weights (compute does not depend on weight values), into a models folder with the
registry's layout. The project's own loaders then read it, so what is timed is what ``repose``
and ``finetune`` run; model loading is excluded from every figure.

Timed, each beside its stock counterpart where one exists:

* fine-tuning, the published recipe (60 steps, batch 2, 512x512, rank 32): seconds per case and
  per step for the published step, the fast step run eagerly and the fast step replayed as one
  captured CUDA graph (capture included: it is paid per case), peak memory, the model FLOP
  utilisation (FLOPs of one step counted by torch's FlopCounterMode), and the eager and captured
  runs' loss curves and LoRAs compared;
* generation of one target at 1024x1024, 25 Euler steps, CFG 5: stock diffusers SDXL + ControlNet,
  then ``Generator`` with VCM + LoRA in the default profile (identity K/V kept, LoRA merged),
  eager and with its transformer and ResNet blocks compiled (the first call's compile time apart, then a new
  identity and the graphs it compiled: none is the goal), and in the reference profile (as
  published); RGB and RGBA, one target and four batched;
* the transparent decoder alone (8 views) for one 1024x1024 image.

Without CUDA (and without ``--plumbing``) it says so and exits 0. ``--plumbing`` runs the same
code on the CPU with the tiny kit's shapes, a 64x64 frame and 2 denoising steps, in about a
minute: it proves the script, its figures mean nothing (the captured step falls back to eager
there: CUDA graphs need CUDA).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import oneposetrans  # noqa: F401  (sets HF_HUB_OFFLINE before the hub libraries load)
import torch

from oneposetrans.finetune import FinetuneCase, FinetuneSettings, LoraTrainer
from oneposetrans.generate import Generator, identity_image
from oneposetrans.layerdiffuse import PUBLISHED_DECODER_WIDTHS
from oneposetrans.profiles import DEFAULT, REFERENCE
from oneposetrans.progress import set_enabled as set_progress
from oneposetrans.settings import GenerationSettings
from oneposetrans.testing.tiny import (
    TINY_DECODER_WIDTHS,
    TINY_FACE_HIDDEN,
    make_tiny_models,
    tiny_cache_dir,
    write_instantid,
    write_ip_adapter,
    write_layerdiffuse,
)

CONFIGS = Path(__file__).parent / "configs"
CAPTION = "A woman with face, orange spacesuit with mission patches"
# bf16 dense peak of the GPUs this is run on (TFLOP/s), for the utilisation estimate.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


@dataclass
class Shapes:
    """Configurations of every model the case needs."""

    unet: dict
    vae: dict
    text_encoder: dict
    text_encoder_2: dict
    image_encoder: dict
    face_width: int
    decoder_widths: tuple[int, ...]


def _config(path: Path) -> dict:
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


def full_shapes() -> Shapes:
    text = _config(CONFIGS / "clip_text_encoders.json")
    return Shapes(
        unet=_config(CONFIGS / "sdxl_unet.json"),
        vae=_config(CONFIGS / "sdxl_vae.json"),
        text_encoder=text["text_encoder"],
        text_encoder_2=text["text_encoder_2"],
        # CLIP ViT-H/14 (laion2B), the encoder of h94/IP-Adapter's sdxl_models/image_encoder.
        image_encoder=dict(
            hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
            image_size=224, patch_size=14, projection_dim=1024, hidden_act="gelu",
        ),
        face_width=1280,
        decoder_widths=PUBLISHED_DECODER_WIDTHS,
    )


def tiny_shapes(kit: Path) -> Shapes:
    base = kit / "RealVisXL_V4.0"
    return Shapes(
        unet=_config(base / "unet" / "config.json"),
        vae=_config(base / "vae" / "config.json"),
        text_encoder=_config(base / "text_encoder" / "config.json"),
        text_encoder_2=_config(base / "text_encoder_2" / "config.json"),
        image_encoder=_config(kit / "IP-Adapter" / "models" / "image_encoder" / "config.json"),
        face_width=TINY_FACE_HIDDEN,
        decoder_widths=TINY_DECODER_WIDTHS,
    )


def build_models(folder: Path, shapes: Shapes, kit: Path, device: torch.device, dtype: torch.dtype) -> None:
    """A models folder in the registry's layout with random weights of the given shapes. The
    tokenizers (the real CLIP vocabulary), the scheduler and antelopev2 come from the tiny kit:
    face detection, once per identity, runs the kit's tiny ONNX files, so its share of the
    generation figures is smaller than with the real models."""
    from diffusers import AutoencoderKL, ControlNetModel, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    base = kit / "RealVisXL_V4.0"
    with torch.device(device):
        unet = UNet2DConditionModel(**shapes.unet)
        text_encoders = [
            CLIPTextModel(CLIPTextConfig(**shapes.text_encoder)),
            CLIPTextModelWithProjection(CLIPTextConfig(**shapes.text_encoder_2)),
        ]
        vae = AutoencoderKL(**shapes.vae)
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**shapes.image_encoder))
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoders[0], text_encoder_2=text_encoders[1],
        tokenizer=CLIPTokenizer.from_pretrained(base, subfolder="tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(base, subfolder="tokenizer_2"),
        unet=unet, scheduler=EulerDiscreteScheduler.from_pretrained(base, subfolder="scheduler"),
    )
    pipe.to(dtype=dtype).save_pretrained(folder / "RealVisXL_V4.0")
    for name in ("tokenizer", "tokenizer_2"):  # the kit's files as written, in the layout the registry checks
        shutil.copytree(base / name, folder / "RealVisXL_V4.0" / name, dirs_exist_ok=True)
    ControlNetModel.from_unet(unet).to(dtype).save_pretrained(folder / "controlnet-openpose-sdxl-1.0")
    write_ip_adapter(folder / "IP-Adapter", unet, image_encoder.to(dtype), seed=30)
    write_instantid(folder / "InstantID", unet, shapes.face_width, seed=40)
    write_layerdiffuse(folder / "LayerDiffuse", unet, shapes.decoder_widths, seed=50)
    (folder / "antelopev2").symlink_to(kit / "antelopev2")


@dataclass
class Timer:
    device: torch.device
    json_path: Path | None = None
    header: dict = field(default_factory=dict)
    figures: dict = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    last_line: float = field(default_factory=time.perf_counter)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gb(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None

    def say(self, line: str) -> None:
        self.last_line = time.perf_counter()
        print(f"[{self.last_line - self.started:6.0f} s] {line}", flush=True)

    def start_heartbeat(self, every: float = 25.0) -> None:
        """A line at least every ``every`` seconds, so a log shows that a long figure still runs."""

        def beat():
            while True:
                time.sleep(5)
                if time.perf_counter() - self.last_line >= every:
                    self.say(f"... still timing ({len(self.figures)} figures so far)")

        threading.Thread(target=beat, daemon=True).start()

    def record(self, name: str, values: dict) -> None:
        """Keep a figure, print it and rewrite the JSON, so a run cut short keeps what it measured."""
        self.figures[name] = values
        self.say(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in values.items() if isinstance(v, float)))
        if self.json_path:
            self.json_path.write_text(json.dumps({**self.header, "figures": self.figures}, indent=2) + "\n")

    @contextlib.contextmanager
    def guard(self, name: str):
        """A figure that fails is recorded with its error, and the run goes on to the next."""
        try:
            yield
        except Exception as error:  # noqa: BLE001 (a bench on a lent machine: keep every other figure)
            traceback.print_exc()
            self.figures[name] = {"error": f"{type(error).__name__}: {error}".splitlines()[0]}
            self.say(f"{name}: FAILED {self.figures[name]['error']}")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def seconds(self, run, repeats: int, warmup=None) -> float:
        """Median wall time of ``run()`` over ``repeats`` runs after one warm-up, ``warmup()`` when
        given (a shorter run of the same shapes: the kernels, plans and caches are the same)."""
        (warmup or run)()
        times = []
        for _ in range(repeats):
            self.sync()
            started = time.perf_counter()
            run()
            self.sync()
            times.append(time.perf_counter() - started)
        return statistics.median(times)


STEPS = {
    "published": ("published step", dict(fast_step=False), {}),
    "fast": ("fast step, eager", dict(fast_step=True), dict(cuda_graph=False)),
    "captured": ("fast step, one captured CUDA graph", dict(fast_step=True), dict(cuda_graph=True)),
}


def time_step(trainer, case, timer: Timer, settings: dict, repeats: int, flops: bool, step: tuple, part: str, results: dict) -> None:
    """One training step's figures; ``results[part]`` gets the last run and its LoRA."""
    from torch.utils.flop_counter import FlopCounterMode

    name, profile_change, setting_change = step
    trainer.profile = DEFAULT.replace(**profile_change)
    timer.reset_peak()

    def train(steps: int = settings["steps"]):
        trainer.settings = FinetuneSettings(**dict(settings, **setting_change, steps=steps))
        results[part] = trainer.train(case)  # the next train() drops the adapter

    timer.say(f"finetune, {name}: timing {repeats} case(s) of {settings['steps']} steps")
    seconds = timer.seconds(train, repeats, warmup=lambda: train(3))
    values = {"s_per_case": seconds, "ms_per_step": 1000 * seconds / settings["steps"], "peak_gb": timer.peak_gb()}
    results[part] = (results[part], trainer.lora_state_dict())
    trainer.discard()
    values["captured"] = results[part][0].captured
    if values["captured"]:
        values["capture_s_per_case"] = results[part][0].capture_seconds
    if flops:
        trainer.settings = FinetuneSettings(**dict(settings, **setting_change, steps=1))
        with FlopCounterMode(display=False) as counter:
            trainer.train(case)
        trainer.discard()
        values["tflop_per_step"] = counter.get_total_flops() / 1e12
    timer.record(f"finetune, {name}", values)


def time_finetune(models: Path, photo: Path, timer: Timer, settings: dict, repeats: int, parts: set[str], flops: bool) -> Path:
    """Seconds per case for each training step asked for (the default profile with only the step
    changed); the eager and captured fast steps' loss curves and LoRAs compared (same seed).
    Returns a LoRA trained with the default step."""
    trainer = LoraTrainer.from_models_dir(models, FinetuneSettings(**settings), timer.device)
    case = FinetuneCase("subject", [photo], CAPTION)
    lora = photo.parent / "subject.safetensors"
    results = {}
    for part, step in STEPS.items():
        if part in parts:
            with timer.guard(f"finetune, {step[0]}"):
                time_step(trainer, case, timer, settings, repeats, flops, step, part, results)
    if "fast" in results and "captured" in results:
        (eager, eager_lora), (captured, captured_lora) = results["fast"], results["captured"]
        ups = [k for k in eager_lora if "lora.up" in k]
        difference = sum(((eager_lora[k] - captured_lora[k]) ** 2).sum() for k in ups).sqrt()
        timer.record("finetune, captured against eager (same seed)", {
            "max_loss_difference": max(abs(x - y) for x, y in zip(eager.losses, captured.losses)),
            "max_loss": max(eager.losses),
            "lora_up_relative_difference": float(difference / sum((eager_lora[k] ** 2).sum() for k in ups).sqrt()),
        })
    trainer.profile = DEFAULT
    trainer.settings = FinetuneSettings(**dict(settings, steps=settings["steps"] if parts & set(STEPS) else 1))
    trainer.train(case)
    trainer.save(lora)
    del trainer
    return lora


def time_target(generator, timer: Timer, lora: Path, other_lora: Path, source, other_source, pose, side: int, steps: int,
                repeats: int, transparent: bool, poses: int, compiled: bool, name: str) -> None:
    """Seconds per target of one generation figure; when compiled, the first call (which
    compiles) on its own, then a second identity and the graphs it compiled."""
    from torch._dynamo.utils import counters

    def run(count: int = steps, identity=(lora, source)):
        settings = GenerationSettings(steps=count, resolution=side, transparent=transparent, batch_size=4)
        generator.generate(CAPTION, [pose] * poses, settings, lora=identity[0], source=identity[1])

    timer.reset_peak()
    first = None
    if compiled:
        timer.sync()
        began = time.perf_counter()
        run()
        timer.sync()
        first = time.perf_counter() - began
    seconds = timer.seconds(run, repeats, warmup=lambda: run(2))
    values = {"s_per_target": seconds / poses, "peak_gb": timer.peak_gb()}
    if first is not None:
        values["first_call_s"] = first
        values["compile_s"] = first - seconds
        graphs = counters["stats"]["unique_graphs"]
        other = timer.seconds(lambda: run(identity=(other_lora, other_source)), 1, warmup=lambda: None)
        values["new_identity_s_per_target"] = other / poses
        values["graphs_compiled_by_a_new_identity"] = float(counters["stats"]["unique_graphs"] - graphs)
    timer.record(name, values)


def time_generation(
    models: Path, lora: Path, photo: Path, timer: Timer, side: int, steps: int, repeats: int, dtype: str, parts: set[str]
) -> None:
    """Stock diffusers, then the Generator eager and compiled (default profile) and in the
    reference profile, RGB and RGBA, one target and four batched."""
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline
    from PIL import Image

    pose = Image.new("RGB", (side, side))
    pose.paste((255, 0, 0), (side // 3, side // 4, side // 3 + side // 16, side // 4 + side // 2))
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    if "stock" in parts:
        with timer.guard("generation, stock diffusers SDXL + ControlNet (RGB)"):
            controlnet = ControlNetModel.from_pretrained(models / "controlnet-openpose-sdxl-1.0", dtype=torch_dtype)
            stock = StableDiffusionXLControlNetPipeline.from_pretrained(
                models / "RealVisXL_V4.0", controlnet=controlnet, dtype=torch_dtype, add_watermarker=False
            ).to(timer.device)
            stock.set_progress_bar_config(disable=True)

            def run_stock(count: int = steps):
                stock(CAPTION, image=pose, num_inference_steps=count, guidance_scale=5.0, negative_prompt="low quality, bad quality",
                      generator=torch.Generator(timer.device).manual_seed(97))

            timer.reset_peak()
            seconds = timer.seconds(run_stock, repeats, warmup=lambda: run_stock(2))
            timer.record("generation, stock diffusers SDXL + ControlNet (RGB)", {"s_per_target": seconds, "peak_gb": timer.peak_gb()})
            del stock, controlnet
            if timer.device.type == "cuda":
                torch.cuda.empty_cache()
    # A second identity (another LoRA, the photo mirrored), to show that it reuses compiled code.
    other_lora = photo.parent / "other.safetensors"
    from safetensors.torch import load_file, save_file

    save_file({k: -v for k, v in load_file(lora).items()}, other_lora)
    source_of = lambda profile, image: identity_image(image.convert("RGBA"), profile)  # noqa: E731
    variants = [
        ("eager", DEFAULT, False, (("RGB", False, 1), ("RGBA", True, 1), ("RGBA, 4 poses batched", True, 4))),
        ("compiled", DEFAULT, True, (("RGBA", True, 1), ("RGBA, 4 poses batched", True, 4))),
        ("reference", REFERENCE, False, (("RGB", False, 1), ("RGBA", True, 1), ("RGBA, 4 poses batched", True, 4))),
    ]
    for part, profile, compiled, runs in variants:
        if part not in parts and not (part == "eager" and "decoder" in parts):
            continue
        with timer.guard(f"generation, {part}"):
            started = time.perf_counter()
            generator = Generator(models, str(timer.device), dtype, profile, compile=compiled)
            timer.say(f"generation, {part}: models loaded in {time.perf_counter() - started:.0f} s")
            photo_image = Image.open(photo)
            source = source_of(profile, photo_image)
            label_of = f"{profile.name} profile{', compiled blocks' if compiled else ''}, VCM + LoRA"
            for label, transparent, poses in runs if part in parts else ():
                with timer.guard(f"generation, {label_of}, {label}"):
                    time_target(generator, timer, lora, other_lora, source, source_of(profile, photo_image.transpose(Image.FLIP_LEFT_RIGHT)),
                                pose, side, steps, repeats, transparent, poses, compiled, f"generation, {label_of}, {label}")
            if part == "eager" and "decoder" in parts:
                latents = torch.randn(1, 4, side // 8, side // 8, generator=torch.Generator().manual_seed(0)).to(timer.device, generator.pipe.unet.dtype)
                timer.record("transparent decoder, 8 views, one image", {
                    "s_per_image": timer.seconds(lambda: generator.pipe.decode_transparent_latents(latents), repeats)
                })
        generator = None  # its memory goes before the next variant loads, also after a failure
        if timer.device.type == "cuda":
            torch.cuda.empty_cache()


def print_table(figures: dict, device_name: str, peak_tflops: float | None) -> None:
    print(f"device: {device_name}, torch {torch.__version__}")
    stock = figures.get("generation, stock diffusers SDXL + ControlNet (RGB)", {}).get("s_per_target")
    published_step = figures.get("finetune, published step", {}).get("ms_per_step")
    fast_eager = figures.get("finetune, fast step, eager", {}).get("ms_per_step")
    for name, values in figures.items():
        cells = []
        for key, value in values.items():
            if isinstance(value, bool):
                cells.append(f"{key} {'yes' if value else 'no'}")
            elif value is not None:
                cells.append(f"{key} {value:.3f}")
        if "s_per_target" in values and stock:
            cells.append(f"{values['s_per_target'] / stock:.2f}x stock")
        if "ms_per_step" in values and published_step:
            cells.append(f"{values['ms_per_step'] / published_step:.2f}x the published step")
        if "ms_per_step" in values and fast_eager and "eager" not in name:
            cells.append(f"{values['ms_per_step'] / fast_eager:.2f}x the eager fast step")
        if "tflop_per_step" in values and peak_tflops:
            cells.append(f"MFU {100 * values['tflop_per_step'] / (values['ms_per_step'] / 1000) / peak_tflops:.1f} %")
        print(f"  {name}: {', '.join(cells)}", flush=True)


PARTS = ("published", "fast", "captured", "stock", "eager", "compiled", "reference", "decoder")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plumbing", action="store_true", help="tiny shapes on the CPU: check the script, not the speed")
    parser.add_argument("--json", type=Path, help="also write the figures here (rewritten after each figure)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure (median), after one short warm-up")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts to time, of {', '.join(PARTS)} (default: all)")
    parser.add_argument("--models", type=Path, help="keep the generated models folder here (default: a temporary one)")
    parser.add_argument("--no-flops", dest="flops", action="store_false", help="skip counting each training step's FLOPs")
    arguments = parser.parse_args()
    parts = {part.strip() for part in arguments.only.split(",") if part.strip()}
    if parts - set(PARTS):
        parser.error(f"--only: unknown part(s) {', '.join(sorted(parts - set(PARTS)))}; choose from {', '.join(PARTS)}")

    if arguments.plumbing:
        device, dtype, side, steps, repeats = torch.device("cpu"), "fp32", 64, 2, 1
        finetune = dict(steps=3, resolution=64, mixed_precision="no")
    elif torch.cuda.is_available():
        device, dtype, side, steps, repeats = torch.device("cuda"), "bf16", 1024, 25, arguments.repeats
        finetune = dict(steps=60, resolution=512, mixed_precision="bf16")
    else:
        print("full-scale benchmark skipped: no CUDA device on this machine (--plumbing checks the script on the CPU)")
        return 0
    set_progress(False)  # the bench prints its own lines; the stages' bars would flood a device log
    # Only what the bench reads from the kit: the tokenizers and scheduler (sdxl-base), the face
    # files, and in plumbing the tiny image encoder's configuration.
    kit = make_tiny_models(tiny_cache_dir(), ["sdxl-base", "antelopev2"] + (["ip-adapter"] if arguments.plumbing else []))
    shapes = tiny_shapes(kit) if arguments.plumbing else full_shapes()
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (plumbing: figures mean nothing)"
    peak = next((value for key, value in PEAK_TFLOPS.items() if key in device_name), None)
    timer = Timer(device, arguments.json, {"device": device_name, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")})
    timer.start_heartbeat()
    timer.say(f"{device_name}, torch {torch.__version__}: building the models")
    with tempfile.TemporaryDirectory() as tmp:
        models = arguments.models or Path(tmp) / "models"
        started = time.perf_counter()
        build_models(models, shapes, kit, device, {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype])
        timer.say(f"models written in {time.perf_counter() - started:.0f} s (excluded from every figure)")
        if device.type == "cuda":
            torch.cuda.empty_cache()
        from PIL import Image
        from skimage import data

        photo = Path(tmp) / "source.png"
        Image.fromarray(data.astronaut()).save(photo)
        # Without a step to time, a LoRA of the right shapes trained for one step.
        lora = time_finetune(models, photo, timer, finetune, repeats, parts, arguments.flops)
        if parts - set(STEPS):
            time_generation(models, lora, photo, timer, side, steps, repeats, dtype, parts)
    print_table(timer.figures, device_name, peak)
    return 0


if __name__ == "__main__":
    sys.exit(main())
