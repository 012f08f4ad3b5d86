"""Test-time LoRA fine-tuning: the "one-shot" of OnePoseTrans (arXiv 2409.09593; the published lora_deepfashion.py and lora_wpose.py).

For each source (or each set of views of one person) a rank-32 UNet LoRA is fitted to the
photo and its caption with the plain epsilon-prediction loss, then saved in the diffusers
LoRA format as ``lora/<name>.safetensors``. The base models are loaded once per process;
each case adds a fresh adapter to the same UNet and deletes it afterwards.

Profiles differ where the published trainer disagrees with inference (the profile's
``finetune_*`` policies and ``fast_step``):

* ``reference``: pooled text embedding = text_encoder_2's *unprojected* pooler output, and
  SDXL time ids (W, H, 0, 0, W, H) of the full-size photo, as published. The crops come from
  torchvision's ``Resize(512)`` (long side truncated) and ``RandomCrop(512)`` drawing from torch's
  generator, and the VAE, its weights rounded through bf16 as the published loader's
  ``torch_dtype=torch.bfloat16`` left them, encodes in the training precision (fp16 on a GPU), so
  that seed 0 gives the published crops and latents.
* ``default``: the *projected* pooled embedding the generator uses, and time ids
  (H, W, crop top, crop left, 512, 512) that describe the crop actually trained on (the
  SDXL training convention).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from oneposetrans import registry
from oneposetrans.errors import BadInputError, CaseError, MissingModelError, OnePoseTransError
from oneposetrans.image_io import load_image
from oneposetrans.profiles import DEFAULT, Profile
from oneposetrans.progress import Progress
from oneposetrans.results import ResultsTree, atomic_path, safe_component
from oneposetrans.settings import FinetuneSettings
from oneposetrans.runtime import quiet_libraries, resolve_device
from oneposetrans.stages import Done, Stage

ADAPTER = "oneposetrans_case"
logger = logging.getLogger(__name__)


@dataclass
class FinetuneCase:
    """One LoRA to train: one or several photos of the same person and their caption."""

    name: str
    images: list[Path]
    caption: str | None
    masks: list[Path | None] = field(default_factory=list)
    problem: str | None = None
    """Why the case cannot run (found while building the list); it then fails with this reason."""


@dataclass
class TrainedLora:
    losses: list[float]
    seconds: float
    peak_memory_mb: float
    captured: bool = False
    """The steps ran as replays of one captured CUDA graph."""
    capture_seconds: float = 0.0
    """Of ``seconds``, the warm-up steps and the capture (paid once per case)."""


def _precision(setting: str, device: torch.device, profile: Profile) -> str:
    """"auto": fp16 on a GPU as published; the fast step takes bf16 where the GPU has it (no loss
    scaling, so its step can be captured as one CUDA graph)."""
    if setting == "auto":
        if device.type != "cuda":
            return "no"
        return "bf16" if profile.fast_step and torch.cuda.is_bf16_supported() else "fp16"
    return setting


class LoraTrainer:
    """Holds the frozen SDXL components; :meth:`train` fits one case's LoRA."""

    def __init__(
        self, components: dict, settings: FinetuneSettings, device: str | torch.device = "auto", profile: Profile = DEFAULT
    ):
        """``components``: tokenizer, tokenizer_2, text_encoder, text_encoder_2 (with projection),
        vae, unet and a DDPM-style noise_scheduler, as in an SDXL pipeline."""
        self.settings = settings
        self.profile = profile
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.precision = _precision(settings.mixed_precision, self.device, profile)
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "no": torch.float32}[self.precision]
        self.tokenizers = [components["tokenizer"], components["tokenizer_2"]]
        self.text_encoders = [components["text_encoder"], components["text_encoder_2"]]
        self.vae, self.unet = components["vae"], components["unet"]
        self.noise_scheduler = components["noise_scheduler"]
        for module in (*self.text_encoders, self.vae, self.unet):
            module.requires_grad_(False).eval()
        for encoder in self.text_encoders:
            encoder.to(self.device, self.weight_dtype)
        # The VAE only encodes; fp32 avoids the SDXL VAE's fp16 overflow (the published trainer used fp16).
        if profile.finetune_vae_dtype == "bf16 rounded":
            # As published: loaded with torch_dtype=bfloat16, then moved to fp16 for training.
            self.vae.to(self.device, torch.bfloat16).to(self.weight_dtype)
        else:
            self.vae.to(self.device, torch.float32)
        self.unet.to(self.device, self.weight_dtype)
        self._caption_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_models_dir(
        cls, models_dir: str | os.PathLike, settings: FinetuneSettings, device: str | torch.device = "auto", profile: Profile = DEFAULT
    ) -> "LoraTrainer":
        """Load the SDXL base of the registry from local files, once for every case to come."""
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        quiet_libraries()
        base = registry.require("sdxl-base", models_dir)
        load = dict(local_files_only=True, variant=registry.weights_variant(base))
        components = {
            "tokenizer": CLIPTokenizer.from_pretrained(base, subfolder="tokenizer"),
            "tokenizer_2": CLIPTokenizer.from_pretrained(base, subfolder="tokenizer_2"),
            "text_encoder": CLIPTextModel.from_pretrained(base, subfolder="text_encoder", **load),
            "text_encoder_2": CLIPTextModelWithProjection.from_pretrained(base, subfolder="text_encoder_2", **load),
            "vae": AutoencoderKL.from_pretrained(base, subfolder="vae", **load),
            "unet": UNet2DConditionModel.from_pretrained(base, subfolder="unet", **load),
            "noise_scheduler": DDPMScheduler.from_pretrained(base, subfolder="scheduler"),
        }
        return cls(components, settings, device, profile)

    @torch.no_grad()
    def encode_caption(self, caption: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt embeds 1x77x2048, pooled 1x1280); computed once per caption."""
        if caption not in self._caption_cache:
            hidden, pooled = [], None
            for index, (tokenizer, encoder) in enumerate(zip(self.tokenizers, self.text_encoders)):
                ids = tokenizer(
                    caption, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
                ).input_ids.to(self.device)
                # text_encoder_2's inner text model exposes the unprojected pooler output.
                output = (encoder.text_model if index == 1 else encoder)(ids, output_hidden_states=True)
                hidden.append(output.hidden_states[-2])
                if index == 1:
                    pooled = output.pooler_output
                    if self.profile.finetune_pooled == "projected":
                        pooled = encoder.text_projection(pooled)
            self._caption_cache[caption] = (torch.cat(hidden, dim=-1), pooled)
        return self._caption_cache[caption]

    def _augment(
        self, image: Image.Image, mask: Image.Image | None, draws: "_CaseDraws"
    ) -> tuple[torch.Tensor, torch.Tensor | None, list[int]]:
        """Shorter side to the training resolution (bilinear), then a random square crop drawn
        from the case's own generators (``draws``)."""
        if self.profile.finetune_crops == "torchvision":
            return self._augment_as_published(image, mask, draws.host)
        size = self.settings.resolution
        scale = size / min(image.size)
        width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
        image = image.resize((width, height), Image.BILINEAR)
        top, left = draws.crops.randint(0, height - size), draws.crops.randint(0, width - size)
        box = (left, top, left + size, top + size)
        pixels = torch.from_numpy(np.asarray(image.crop(box), dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
        weight = None
        if mask is not None:
            cropped = mask.resize((width, height), Image.NEAREST).crop(box)
            weight = torch.from_numpy(np.asarray(cropped, dtype=np.float32) / 255.0)[None]
        return pixels, weight, [top, left]

    def _augment_as_published(
        self, image: Image.Image, mask: Image.Image | None, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None, list[int]]:
        """torchvision's Resize (long side truncated, e.g. 750x1101 -> 512x751), RandomCrop's two
        draws, ToTensor and Normalize(0.5, 0.5): the published transforms. The draws are
        ``RandomCrop.get_params``' own (none for a picture already square at the size), from
        ``generator`` instead of torch's global one."""
        from torchvision import transforms
        from torchvision.transforms import functional

        size = self.settings.resolution
        resized = transforms.Resize(size, interpolation=transforms.InterpolationMode.BILINEAR)(image)
        top = left = 0
        if resized.size != (size, size):
            top = int(torch.randint(0, resized.height - size + 1, (1,), generator=generator))
            left = int(torch.randint(0, resized.width - size + 1, (1,), generator=generator))
        pixels = functional.normalize(functional.to_tensor(functional.crop(resized, top, left, size, size)), [0.5], [0.5])
        weight = None
        if mask is not None:
            cropped = mask.resize(resized.size, Image.NEAREST).crop((left, top, left + size, top + size))
            weight = torch.from_numpy(np.asarray(cropped, dtype=np.float32) / 255.0)[None]
        return pixels, weight, [top, left]

    @torch.no_grad()
    def _encode_moments(self, crops: list, chunk: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of the VAE posterior of every crop, ``chunk`` crops a call."""
        means, stds = [], []
        for first in range(0, len(crops), chunk):
            pixels = torch.stack([c[0][0] for c in crops[first : first + chunk]]).to(self.device, self.vae.dtype)
            posterior = self.vae.encode(pixels).latent_dist
            means.append(posterior.mean)
            stds.append(posterior.std)
        return torch.cat(means), torch.cat(stds)

    def _time_ids(self, photo_size: tuple[int, int], crop: list[int]) -> list[int]:
        """SDXL's six size conditions, kept as integers (int64, as the published trainer built
        them): in fp16 a side over 2048 would round (2049 -> 2048), in bf16 one over 256."""
        width, height = photo_size
        size = self.settings.resolution
        if self.profile.finetune_time_ids == "photo":
            return [width, height, 0, 0, width, height]
        return [height, width, crop[0], crop[1], size, size]

    def _load_case(self, case: FinetuneCase) -> list[tuple[Image.Image, Image.Image | None]]:
        views = []
        for index, path in enumerate(case.images):
            mask_path = case.masks[index] if index < len(case.masks) else None
            mask = None
            if self.settings.masked_loss:
                if mask_path is None or not Path(mask_path).exists():
                    raise BadInputError(f"{path}: --masked-loss needs a person mask, none found")
                mask = load_image(mask_path, "L")
            views.append((load_image(path, "RGB"), mask))
        return views

    def train(self, case: FinetuneCase) -> TrainedLora:
        """Fit a fresh LoRA for ``case``; it stays on the UNet until :meth:`save` or :meth:`discard`."""
        from peft import LoraConfig

        if case.problem or not case.caption:
            raise BadInputError(case.problem or f"{case.name}: no caption")
        views = self._load_case(case)
        settings = self.settings
        # Seeded per case, as published (set_seed): a LoRA does not depend on the cases trained
        # before it, nor on any other thread of the process.
        draws = _CaseDraws(settings.seed, self.device)
        self.discard()
        with torch.random.fork_rng(devices=[]):  # peft's own draws are redone below
            self.unet.add_adapter(
                LoraConfig(
                    r=settings.rank,
                    lora_alpha=settings.alpha,
                    init_lora_weights="gaussian",
                    target_modules=list(settings.target_modules),
                ),
                adapter_name=ADAPTER,
            )
        initialise_lora(self.unet, draws.host)
        parameters = [p for p in self.unet.parameters() if p.requires_grad]
        published = not self.profile.fast_step
        if published:
            # As published (accelerate + cast_training_params): fp32 LoRA weights under autocast,
            # which casts each of them to the compute dtype at every call.
            lora_weights = _PublishedWeights(parameters)
        else:
            lora_weights = _MasterWeights(parameters, self.weight_dtype)
        # The fast step with its crops planned ahead has fixed shapes and no host sync; on a GPU
        # without loss scaling it runs as one CUDA graph, the optimizer inside.
        fixed_shape = not published and self.profile.finetune_crops == "pil"
        capture = fixed_shape and self.device.type == "cuda" and self.precision != "fp16" and settings.cuda_graph
        optimizer = torch.optim.AdamW(
            lora_weights.optimized,
            lr=settings.learning_rate,
            betas=(settings.adam_beta1, settings.adam_beta2),
            weight_decay=settings.weight_decay,
            eps=settings.adam_epsilon,
            # One fused update for all 1,120 LoRA matrices instead of about ten operations each.
            fused=None if published else True,
            capturable=capture,
        )
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        autocast = (
            torch.autocast(self.device.type, dtype=self.weight_dtype)
            if self.precision != "no" and published
            else contextlib.nullcontext()
        )
        prompt_embeds, pooled = self.encode_caption(case.caption)
        prompt_embeds = prompt_embeds.expand(settings.batch_size, -1, -1)
        pooled = pooled.expand(settings.batch_size, -1)

        def optimize(latents: torch.Tensor, time_ids: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
            """One step from the clean latents: noise, the UNet, the loss, backward, the update."""
            latents = (latents * self.vae.config.scaling_factor).to(self.weight_dtype)
            # randn_like, as published: on a CPU it fills through another kernel than randn does.
            noise = torch.randn_like(latents, generator=draws.device)
            timesteps = torch.randint(
                0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=draws.device, device=self.device
            )
            noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
            with autocast:
                prediction = self.unet(
                    noisy,
                    timesteps,
                    encoder_hidden_states=prompt_embeds,
                    added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids},
                ).sample
            error = F.mse_loss(prediction.float(), noise.float(), reduction="none")
            if weights is not None:
                weights = F.interpolate(weights, size=error.shape[-2:], mode="area")
                loss = (error * weights).sum() / (weights.sum() * error.shape[1]).clamp(min=1.0)
            else:
                loss = error.mean()
            scaler.scale(loss).backward()
            lora_weights.gradients_to_optimizer()
            scaler.step(optimizer)
            scaler.update()
            lora_weights.optimizer_to_model()
            lora_weights.zero_grad(optimizer)
            return loss.detach()

        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            torch.cuda.synchronize(self.device)
        started = time.perf_counter()
        losses = []
        self.unet.train()

        def draw_crops() -> list:
            chosen = (draws.crops.choice(views) for _ in range(settings.batch_size))
            return [(self._augment(*view, draws), view[0].size) for view in chosen]

        # The fast step draws every crop first and encodes them in a few large VAE calls. Only the
        # default crops can move: they come from the Python generator, while the VAE's sampling
        # noise is still drawn from the device's in the loop, in the published order.
        fixed, capture_seconds = None, 0.0
        if fixed_shape:
            planned = [draw_crops() for _ in range(settings.steps)]
            fixed = _FixedShapeStep(
                optimize,
                draws.device,
                self._encode_moments([crop for crops in planned for crop in crops]),
                torch.tensor(
                    [[self._time_ids(size, crop[2]) for crop, size in crops] for crops in planned],
                    dtype=torch.long, device=self.device,
                ),
                torch.stack([torch.stack([c[0][1] for c in crops]) for crops in planned]).to(self.device)
                if settings.masked_loss else None,
            )
            if capture:
                capture_started = time.perf_counter()
                try:
                    fixed.capture(lora_weights, optimizer)
                    torch.cuda.synchronize(self.device)
                    capture_seconds = time.perf_counter() - capture_started
                except RuntimeError as error:  # a library that syncs inside the step: run it eagerly
                    fixed.graph = None
                    logger.warning("finetune: the step could not be captured as a CUDA graph, running it eagerly (%s)", str(error).splitlines()[0])
        bar = Progress(settings.steps, f"finetune {case.name}")
        for step in range(settings.steps):
            if fixed is not None:
                losses.append(fixed(step))
                bar.update()
                continue
            crops = draw_crops()
            time_ids = torch.tensor(
                [self._time_ids(size, crop[2]) for crop, size in crops], dtype=torch.long, device=self.device
            )
            with torch.no_grad():
                pixels = torch.stack([c[0][0] for c in crops]).to(self.device, self.vae.dtype)
                latents = self.vae.encode(pixels).latent_dist.sample(generator=draws.device)
            weights = torch.stack([c[0][1] for c in crops]).to(self.device) if settings.masked_loss else None
            # Kept on the device: reading it every step would wait for the GPU each time.
            losses.append(optimize(latents, time_ids, weights))
            bar.update()
        bar.close()
        losses = torch.stack(losses).float().cpu().tolist()
        self.unet.eval()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        captured = fixed is not None and fixed.graph is not None
        del fixed  # the graph's memory pool goes with it
        return TrainedLora(losses, time.perf_counter() - started, peak, captured, capture_seconds)

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """The trained adapter in diffusers' key layout (``...attn1.to_q.lora.down.weight``)."""
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        state = get_peft_model_state_dict(self.unet, adapter_name=ADAPTER)
        return convert_state_dict_to_diffusers({k: v.detach().float().cpu() for k, v in state.items()})

    def save(self, path: str | os.PathLike) -> Path:
        """Write the adapter atomically in the diffusers LoRA format, then drop it."""
        from diffusers import StableDiffusionXLPipeline

        path = Path(path)
        with atomic_path(path) as tmp:
            StableDiffusionXLPipeline.save_lora_weights(
                tmp.parent, unet_lora_layers=self.lora_state_dict(), weight_name=tmp.name, safe_serialization=True
            )
        self.discard()
        return path

    def discard(self) -> None:
        if ADAPTER in getattr(self.unet, "peft_config", {}):
            self.unet.delete_adapters(ADAPTER)


class _CaseDraws:
    """A case's generators, seeded as the published ``set_seed(seed)`` seeded the global ones, so
    that they give the published streams: ``crops`` (Python's: the default crops and the view of
    each), ``host`` (torch on the CPU: the LoRA's initialisation, the published crops) and
    ``device`` (the VAE samples, the noise, the timesteps); on a CPU ``host`` and ``device`` are one
    generator, as torch's global one is. Nothing is drawn from a global generator, which every
    thread of the process shares (Gradio's queue shuffles with Python's)."""

    def __init__(self, seed: int, device: torch.device):
        self.crops = random.Random(seed)
        self.host = torch.Generator().manual_seed(seed)
        self.device = self.host if device.type == "cpu" else torch.Generator(device).manual_seed(seed)


def initialise_lora(unet, generator: torch.Generator) -> None:
    """peft's ``init_lora_weights="gaussian"`` of the adapter, drawn from ``generator`` in peft's
    order: per layer, ``nn.Linear``'s Kaiming draws for A then B, then A ~ N(0, 1/r), B zero. So
    the weights equal what ``set_seed(seed)`` then ``add_adapter`` give, without the global state."""
    from peft.tuners.lora import LoraLayer

    with torch.no_grad():
        for module in unet.modules():
            if isinstance(module, LoraLayer) and ADAPTER in module.lora_A:
                down, up = module.lora_A[ADAPTER].weight, module.lora_B[ADAPTER].weight
                drawn = torch.empty(down.shape)
                torch.nn.init.kaiming_uniform_(drawn, a=math.sqrt(5), generator=generator)
                torch.nn.init.kaiming_uniform_(torch.empty(up.shape), a=math.sqrt(5), generator=generator)
                torch.nn.init.normal_(drawn, std=1 / module.r[ADAPTER], generator=generator)
                down.copy_(drawn)
                up.zero_()


class _FixedShapeStep:
    """The fast step with every input prepared before the loop: the crops' VAE posteriors, their
    time ids and mask weights, one row per step. Step ``i`` samples its latents from row ``i``
    (``mean + std * noise``, drawn as ``latent_dist.sample()`` draws) and runs ``optimize``;
    nothing in it waits for the host, so on a GPU it can be captured once as a CUDA graph and
    replayed for every step (:meth:`capture`), which removes the launch of its ~11,000 kernels
    from each step. Without a capture each step runs eagerly with the same operations in the
    same order, so the two paths draw the same random numbers."""

    def __init__(
        self, optimize, generator: torch.Generator, moments: tuple[torch.Tensor, torch.Tensor], time_ids: torch.Tensor, weights: torch.Tensor | None
    ):
        self.optimize = optimize
        self.generator = generator
        self.batch = time_ids.shape[1]
        self.mean, self.std = moments
        self.time_ids, self.weights = time_ids, weights
        self.graph = None

    def _rows(self, step: int) -> tuple:
        rows = slice(step * self.batch, (step + 1) * self.batch)
        return self.mean[rows], self.std[rows], self.time_ids[step], None if self.weights is None else self.weights[step]

    def _run(self, mean, std, time_ids, weights) -> torch.Tensor:
        with torch.no_grad():
            # What latent_dist.sample() draws: a fresh contiguous tensor (randn_like would follow
            # the posterior's strides and lay the same numbers out differently).
            latents = mean + std * torch.randn(mean.shape, generator=self.generator, device=mean.device, dtype=mean.dtype)
        return self.optimize(latents, time_ids, weights)

    def __call__(self, step: int) -> torch.Tensor:
        if self.graph is None:
            return self._run(*self._rows(step))
        for static, row in zip(self.static_inputs, self._rows(step)):
            if static is not None:
                static.copy_(row, non_blocking=True)
        self.graph.replay()
        return self.static_loss.clone()

    def capture(self, lora_weights, optimizer: torch.optim.Optimizer) -> None:
        """Record one step as a CUDA graph. Two warm-up steps on a side stream first (cuBLAS
        workspaces, the optimizer's state); the weights, the optimizer's state and the random
        generator are then put back as they were, so the captured run trains exactly as many
        steps, from the same start, as the eager one."""
        device = self.mean.device
        parameters = [*lora_weights.parameters, *lora_weights.optimized]
        saved_parameters = [p.detach().clone() for p in parameters]
        saved_rng = self.generator.get_state()
        self.static_inputs = [t.clone() if t is not None else None for t in self._rows(0)]
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._run(*self.static_inputs)
        torch.cuda.current_stream(device).wait_stream(side)
        with torch.no_grad():
            for parameter, saved in zip(parameters, saved_parameters):
                parameter.copy_(saved)
            for state in optimizer.state.values():
                for value in state.values():
                    if torch.is_tensor(value):
                        value.zero_()
        del saved_parameters
        self.graph = torch.cuda.CUDAGraph()
        # The case's own generator advances at each replay as torch's default one would.
        self.graph.register_generator_state(self.generator)
        with torch.cuda.graph(self.graph):
            self.static_loss = self._run(*self.static_inputs)
        self.generator.set_state(saved_rng)


class _PublishedWeights:
    """The LoRA weights themselves in fp32, updated by the optimizer in place."""

    def __init__(self, parameters: list[torch.nn.Parameter]):
        for parameter in parameters:
            parameter.data = parameter.data.float()
        self.optimized = parameters

    def gradients_to_optimizer(self) -> None:
        pass

    def optimizer_to_model(self) -> None:
        pass

    def zero_grad(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)


class _MasterWeights:
    """LoRA weights that compute in the UNet's dtype, so no call casts them, and fp32 master
    copies that the optimizer updates (the mixed-precision scheme of Micikevicius et al., 2018,
    "Mixed Precision Training"): after backward the gradients are copied to the masters in one
    multi-tensor copy, after the update the masters are copied back. With an fp32 UNet the
    masters are the weights themselves and both copies are skipped."""

    def __init__(self, parameters: list[torch.nn.Parameter], dtype: torch.dtype):
        for parameter in parameters:
            parameter.data = parameter.data.to(dtype)
        self.parameters = parameters
        self.separate = dtype != torch.float32
        if not self.separate:
            self.optimized = parameters
            return
        self.optimized = [torch.nn.Parameter(p.detach().float()) for p in parameters]
        for master in self.optimized:
            master.grad = torch.zeros_like(master)

    def gradients_to_optimizer(self) -> None:
        if self.separate:
            torch._foreach_copy_([m.grad for m in self.optimized], [p.grad for p in self.parameters])

    @torch.no_grad()
    def optimizer_to_model(self) -> None:
        if self.separate:
            torch._foreach_copy_(self.parameters, self.optimized)

    def zero_grad(self, optimizer: torch.optim.Optimizer) -> None:
        # The masters' gradients are overwritten by the next copy; only the model's are dropped.
        if not self.separate:
            optimizer.zero_grad(set_to_none=True)
            return
        for parameter in self.parameters:
            parameter.grad = None


class FinetuneStage(Stage[FinetuneCase]):
    """Train one LoRA per case into ``tree/lora/<name>.safetensors`` (step 3).

    A case that fails (bad photo, out of memory) is recorded with its reason and the trainer is
    reset for the next one.
    """

    name = "finetune"
    unit = "LoRA"

    def __init__(self, tree: ResultsTree, settings: FinetuneSettings, overwrite: bool = False):
        self.tree = tree
        self.settings = settings
        self.overwrite = overwrite

    def case_name(self, case: FinetuneCase) -> str:
        return case.name

    def outputs(self, case: FinetuneCase) -> list[Path]:
        return [self.tree.file("lora", f"{safe_component(case.name, 'case name')}.safetensors")]

    def run(self, case: FinetuneCase, session, log) -> Done:
        target = self.outputs(case)[0]
        trainer = session.trainer(self.settings)
        try:
            trained = trainer.train(case)
            trainer.save(target)
        except MissingModelError:
            raise
        except OnePoseTransError:
            trainer.discard()
            raise
        except (RuntimeError, ValueError, OSError) as error:  # e.g. out of memory: this case only
            trainer.discard()
            raise CaseError(f"{case.name}: {type(error).__name__}: {error}".splitlines()[0]) from None
        log.ok(
            case.name,
            file=str(target),
            steps=self.settings.steps,
            seconds=round(trained.seconds, 3),
            seconds_per_step=round(trained.seconds / self.settings.steps, 4),
            peak_memory_mb=round(trained.peak_memory_mb, 1),
            memory_kind="cuda_allocated" if trainer.device.type == "cuda" else "process_max_rss",
            first_loss=round(trained.losses[0], 5),
            last_loss=round(trained.losses[-1], 5),
            device=str(trainer.device),
            views=len(case.images),
        )
        return Done(f"{target.name}: {trained.seconds:.1f} s, loss {trained.losses[0]:.3f} -> {trained.losses[-1]:.3f}")
