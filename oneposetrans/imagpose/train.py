"""IMAGPose training: three phases over DeepFashion identities, with accelerate.

1. everything except CVA (the UNet, pose encoder and FLC tokenizer), CVA not run, lr 5e-5, ~50k steps;
2. CVA only, lr 5e-5, ~200k steps;
3. everything, lr 1e-6, ~50k steps.

The objective: v-prediction (Salimans & Ho, 2022) with min-SNR-gamma loss weights, gamma 5
(Hang et al., 2023), noise offset 0.05, AdamW (wd 0.01), gradients clipped at 1.0, over the whole
canvas. The profile decides the weight's formula (the published scripts add one to the SNR
before the min), the condition dropout (the published scripts zero the encoders' inputs; phase
1 only the image's, for a tenth of the batches), the data's draw (:mod:`.data`) and the VAE
latents of the conditions (README, *Profiles*). The noise schedule is the checkpoint's own
scheduler, which sampling uses too (the published code trained with scaled-linear betas and
sampled with linear ones). Mixed precision keeps float32 master weights, as the published
DeepSpeed launcher did; frozen modules are held in the compute precision and written to
checkpoints from the folder they came from, bit for bit.

Each checkpoint is an IMAGPose checkpoint folder (``imagpose generate --checkpoint`` loads it)
plus ``training_state.pt`` (optimizer, learning-rate schedule, step). Every random draw is a
function of (seed, step, process), and the data of (seed, sample index), so ``--resume``
continues bit for bit where the checkpoint left off.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from oneposetrans.datasets import read_keypoints_csv
from oneposetrans.errors import BadInputError
from oneposetrans.imagpose.checkpoint import load_pipeline, save_checkpoint
from oneposetrans.imagpose.data import MAX_VIEWS, DataSettings, IdentityCanvases
from oneposetrans.imagpose.modules import from_tiles, to_tiles
from oneposetrans.imagpose.pipeline_imagpose import flc_context
from oneposetrans.profiles import DEFAULT, Profile
from oneposetrans.progress import Progress
from oneposetrans.runtime import quiet_libraries

PHASES = {
    1: {"learning_rate": 5e-5, "max_steps": 50_000, "train": ("unet", "pose_encoder", "feature_tokenizer"), "cva": False},
    2: {"learning_rate": 5e-5, "max_steps": 200_000, "train": ("cross_view_attention",), "cva": True},
    3: {"learning_rate": 1e-6, "max_steps": 50_000, "train": ("unet", "pose_encoder", "feature_tokenizer", "cross_view_attention"), "cva": True},
}
BUNDLED_CONFIGS = {f"phase{phase}": Path(__file__).parent.parent / "data" / f"imagpose_phase{phase}.yaml" for phase in PHASES}
CHECKPOINT_PREFIX = "checkpoint-"
TRAINING_STATE = "training_state.pt"
TRAINING_RECORD = "training.json"


@dataclass
class TrainingConfig:
    """One phase's settings; a config file names the phase and overrides what it needs."""

    phase: int = 1
    init: str | None = None
    """The checkpoint folder to start from (``imagpose init``, or the previous phase's last checkpoint)."""
    learning_rate: float | None = None
    """None: the phase's (5e-5, 5e-5, 1e-6)."""
    max_steps: int | None = None
    """None: the phase's (50k, 200k, 50k optimizer steps)."""
    batch_size: int = 2
    """Canvases per process per micro-batch."""
    gradient_accumulation_steps: int = 1
    lr_warmup_steps: int = 0
    weight_decay: float = 0.01
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    min_snr_gamma: float = 5.0
    noise_offset: float = 0.05
    given_tile_loss_weight: float = 1.0
    """1.0: the loss covers the whole canvas, given tiles included, as published."""
    # The data's settings (defaults in DataSettings).
    tile_long_side: int = DataSettings.tile_long_side
    masked_tiles: tuple[int, int] = DataSettings.masked_tiles
    flip: float = DataSettings.flip
    drop_image_tokens: float = DataSettings.drop_image_tokens
    drop_latent_tokens: float = DataSettings.drop_latent_tokens
    drop_both: float = DataSettings.drop_both
    batch_drop_image: float = 0.1
    """The published phase 1's dropout (reference profile): the share of batches whose
    image-encoder input is zeroed (the per-sample drops above then apply from phase 2)."""
    images: str = "fashion/train_highres"
    """Training photos under --data, as ``prepare-deepfashion`` writes them."""
    keypoints: str = "fasion-resize-annotation-train.csv"
    """Their 18 keypoints under --data (the 256x176 frame)."""
    checkpoint_every: int = 10_000
    checkpoints_kept: int = 2
    log_every: int = 50
    seed: int = 12580
    mixed_precision: str | None = None
    """None: the launcher's choice (``accelerate launch --mixed_precision``)."""
    gradient_checkpointing: bool = False
    workers: int = 2

    def __post_init__(self):
        if self.phase not in PHASES:
            raise BadInputError(f"phase {self.phase}: IMAGPose trains in phases 1, 2 and 3")
        defaults = PHASES[self.phase]
        self.learning_rate = defaults["learning_rate"] if self.learning_rate is None else float(self.learning_rate)
        self.max_steps = defaults["max_steps"] if self.max_steps is None else int(self.max_steps)
        self.adam_betas = tuple(self.adam_betas)
        self.masked_tiles = tuple(self.masked_tiles)
        low, high = self.masked_tiles
        if not 1 <= low <= high <= 3:
            raise BadInputError(f"masked_tiles {list(self.masked_tiles)}: between 1 and 3 of the 4 tiles")
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise BadInputError(f"{name} must be at least 1, got {getattr(self, name)}")

    @property
    def trained(self) -> tuple[str, ...]:
        """The modules this phase trains."""
        return PHASES[self.phase]["train"]

    @property
    def runs_cva(self) -> bool:
        return PHASES[self.phase]["cva"]

    def data_settings(self) -> DataSettings:
        return DataSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(DataSettings)})

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def load_config(source: str | os.PathLike, **overrides) -> TrainingConfig:
    """A config file (YAML or JSON; ``phase1``/``phase2``/``phase3`` name the bundled ones), with
    ``overrides`` (the command line's, None = not given) on top."""
    import yaml

    path = BUNDLED_CONFIGS.get(str(source), Path(source))
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such config file (or name one of {', '.join(BUNDLED_CONFIGS)})") from None
    except yaml.YAMLError as error:
        raise BadInputError(f"{path}: not YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise BadInputError(f"{path}: expected a mapping of settings")
    known = {f.name for f in dataclasses.fields(TrainingConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise BadInputError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    values |= {key: value for key, value in overrides.items() if value is not None}
    try:
        return TrainingConfig(**values)
    except (TypeError, ValueError) as error:
        raise BadInputError(f"{path}: {error}") from None


# --- the objective ------------------------------------------------------------------------


class VelocitySchedule:
    """The scheduler's noise tables, on the device once: x_t = a_t x_0 + s_t e and the
    v-prediction target v = a_t e - s_t x_0 (Salimans & Ho, 2022), with SNR_t = a_t^2 / s_t^2."""

    def __init__(self, scheduler, device: torch.device):
        alphas = scheduler.alphas_cumprod.to(torch.float64)
        self.steps = len(alphas)
        self.signal = alphas.sqrt().to(device, torch.float32)
        self.noise = (1 - alphas).sqrt().to(device, torch.float32)
        self.snr = (alphas / (1 - alphas)).to(device, torch.float32)

    def noisy_and_target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        signal = self.signal[timesteps].view(-1, 1, 1, 1)
        sigma = self.noise[timesteps].view(-1, 1, 1, 1)
        return signal * latents + sigma * noise, signal * noise - sigma * latents

    def min_snr_weights(self, timesteps: torch.Tensor, gamma: float, plus_one: bool = False) -> torch.Tensor:
        """The min-SNR-gamma weights (Hang et al., 2023) of a v-prediction loss: min(SNR, gamma) /
        (SNR + 1), the paper's, or with ``plus_one`` min(SNR + 1, gamma) / (SNR + 1), the published
        IMAGPose scripts' (one added to the SNR before the min: weight 1 wherever SNR + 1 <= gamma)."""
        snr = self.snr[timesteps]
        return (snr + 1 if plus_one else snr).clamp(max=gamma) / (snr + 1)


class CanvasModel(nn.Module):
    """What one optimizer trains: the denoiser (UNet, pose encoder, CVA) and the FLC tokenizer,
    in one module so that data-parallel training syncs them together."""

    def __init__(self, denoiser: nn.Module, tokenizer: nn.Module):
        super().__init__()
        self.denoiser = denoiser
        self.tokenizer = tokenizer

    def forward(self, sample, timesteps, image_tokens, tile_latents, views, drop, pose, tiled: bool) -> torch.Tensor:
        context, mask = flc_context(self.tokenizer, image_tokens, tile_latents, views, drop)
        return self.denoiser(sample, timesteps, context, pose=pose, tiled=tiled, context_mask=mask)


def _modules(model: CanvasModel) -> dict[str, nn.Module]:
    """The trainable modules by component name."""
    return {
        "unet": model.denoiser.unet, "pose_encoder": model.denoiser.pose_encoder,
        "cross_view_attention": model.denoiser.cva, "feature_tokenizer": model.tokenizer,
    }


def micro_batch_indices(step: int, micro: int, accumulation: int, processes: int, process: int, batch_size: int) -> list[int]:
    """The sample indices of one process's micro-batch. The data position is the step: the
    processes take consecutive, disjoint slices of each step's samples."""
    first = ((step * accumulation + micro) * processes + process) * batch_size
    return list(range(first, first + batch_size))


def step_seed(seed: int, step: int, micro: int, process: int) -> int:
    return int(np.random.SeedSequence([seed, step, micro, process]).generate_state(1)[0])


# --- checkpoints --------------------------------------------------------------------------


def checkpoints(output: Path) -> list[Path]:
    """The finished checkpoints in ``output``, oldest first."""
    found = [p for p in output.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and p.name[len(CHECKPOINT_PREFIX) :].isdigit()]
    return sorted((p for p in found if (p / TRAINING_STATE).is_file()), key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


# --- the trainer --------------------------------------------------------------------------


class ImagPoseTrainer:
    """One phase of training. ``resume`` is a checkpoint folder to continue from (or None)."""

    def __init__(
        self,
        config: TrainingConfig,
        data: str | os.PathLike,
        output: str | os.PathLike,
        resume: str | os.PathLike | None = None,
        cpu: bool = False,
        tensorboard: bool = False,
        echo: Callable[[str], None] = print,
        profile: Profile = DEFAULT,
    ):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        quiet_libraries()
        self.config = config
        self.profile = profile
        self.output = Path(output)
        self.echo = echo
        self.tensorboard = tensorboard
        # Phase 1 leaves the CVA modules out of the graph; DDP must not wait for their gradients.
        ddp = DistributedDataParallelKwargs(find_unused_parameters=not config.runs_cva)
        # Without CUDA, accelerate only recognises a multi-process launch when told to use the CPU.
        self.accelerator = Accelerator(
            mixed_precision=config.mixed_precision, cpu=cpu or not torch.cuda.is_available(), gradient_accumulation_steps=config.gradient_accumulation_steps,
            kwargs_handlers=[ddp],
        )
        self.device = self.accelerator.device
        self.compute_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.accelerator.mixed_precision, torch.float32)

        self.source = Path(resume) if resume else Path(config.init) if config.init else None
        if self.source is None:
            raise BadInputError("no checkpoint to start from: give --init (the `imagpose init` folder or the previous phase's checkpoint)")
        data = Path(data)
        keypoints_file = data / config.keypoints
        self.canvases = IdentityCanvases(data / config.images, read_keypoints_csv(keypoints_file), config.data_settings(), config.seed, profile)

        if self.accelerator.is_main_process:
            echo(f"loading {self.source}")
        pipeline = load_pipeline(self.source)
        self.vae = pipeline.vae.to(self.device, self.compute_dtype).eval().requires_grad_(False)
        self.image_encoder = pipeline.image_encoder.to(self.device, self.compute_dtype).eval().requires_grad_(False)
        self.scheduler = pipeline.scheduler
        self.schedule = VelocitySchedule(self.scheduler, self.device)
        model = CanvasModel(pipeline.denoiser, pipeline.feature_tokenizer)
        for name, module in _modules(model).items():
            trained = name in config.trained
            module.requires_grad_(trained)
            # Frozen weights are held in the compute precision once, not cast at every step.
            module.to(self.device, torch.float32 if trained else self.compute_dtype)
        if config.gradient_checkpointing:
            model.denoiser.unet.enable_gradient_checkpointing()
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.trained_parameters = sum(p.numel() for p in self.trainable)
        optimizer = torch.optim.AdamW(
            self.trainable, lr=config.learning_rate, betas=config.adam_betas, weight_decay=config.weight_decay, eps=config.adam_epsilon
        )
        warmup = config.lr_warmup_steps
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.step = 0
        if resume:
            state = torch.load(Path(resume) / TRAINING_STATE, map_location="cpu", weights_only=True)
            self.optimizer.load_state_dict(state["optimizer"])
            self.lr_schedule.load_state_dict(state["lr_schedule"])
            self.step = int(state["step"])

    # -- one step ------------------------------------------------------------------------------

    @property
    def _global_batch(self) -> int:
        return self.config.batch_size * self.accelerator.num_processes

    def batch_indices(self, step: int, micro: int) -> list[int]:
        config, accelerator = self.config, self.accelerator
        return micro_batch_indices(
            step, micro, config.gradient_accumulation_steps, accelerator.num_processes, accelerator.process_index, config.batch_size
        )

    def load_batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return _collate([self.canvases.sample(index) for index in indices])

    def loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        """The min-SNR-weighted v-prediction loss of one batch; ``generator`` draws the latents,
        the noise, the noise offset, the timesteps and the published phase 1's batch dropout."""
        config, device, dtype, profile = self.config, self.device, self.compute_dtype, self.profile
        drop = batch["drop"].to(device)
        with torch.no_grad():
            scale = self.vae.config.scaling_factor
            latents = self.vae.encode(batch["canvas"].to(device, dtype)).latent_dist.sample(generator).float() * scale
            masked = self._condition_latent(batch["masked"].to(device, dtype), generator) * scale
            batch_size, views = latents.shape[0], batch["views"].to(device)
            real = torch.arange(MAX_VIEWS, device=device)[None] < views[:, None]
            pixels = batch["encoder_pixels"].to(device, dtype)
            if "reference" in batch:  # the published FLC reference: one photo, encoded on its own
                reference = self._condition_latent(batch["reference"].to(device, dtype), generator) * scale
                tile_latents = reference[:, None].expand(-1, MAX_VIEWS, -1, -1, -1)
            else:
                tile_latents = to_tiles(masked)[torch.arange(batch_size, device=device)[:, None], batch["view_tiles"].to(device)]
            if profile.imagpose_drop == "encoder inputs":
                # The published null condition: zeros into the encoders, not zero tokens out of them.
                if config.phase == 1:
                    dropped = torch.rand((), generator=generator, device=device) < config.batch_drop_image
                    drop = torch.stack([dropped.expand(batch_size), torch.zeros_like(drop[:, 1])], dim=1)
                pixels = pixels * (~drop[:, 0]).to(dtype)[:, None, None, None, None]
                tile_latents = tile_latents * (~drop[:, 1]).to(tile_latents.dtype)[:, None, None, None, None]
                drop = None
            tokens = self.image_encoder(pixel_values=pixels[real]).last_hidden_state.float()
            image_tokens = tokens.new_zeros(batch_size, MAX_VIEWS, *tokens.shape[1:])
            image_tokens[real] = tokens
            height, width = latents.shape[-2] // 2, latents.shape[-1] // 2
            flags = batch["flags"].to(device)
            flag_map = from_tiles(flags[:, :, None, None, None].expand(-1, -1, 1, height, width))

        noise = torch.randn(latents.shape, generator=generator, device=device)
        if config.noise_offset:
            noise = noise + config.noise_offset * torch.randn((batch_size, latents.shape[1], 1, 1), generator=generator, device=device)
        timesteps = torch.randint(0, self.schedule.steps, (batch_size,), generator=generator, device=device)
        noisy, target = self.schedule.noisy_and_target(latents, noise, timesteps)
        sample = torch.cat([noisy, flag_map, masked], dim=1)
        prediction = self.model(sample, timesteps, image_tokens, tile_latents, views, drop, batch["pose"].to(device), config.runs_cva)
        error = (prediction.float() - target) ** 2
        if config.given_tile_loss_weight != 1.0:
            error = error * (1 + (config.given_tile_loss_weight - 1) * flag_map)
        per_sample = error.mean(dim=(1, 2, 3))
        plus_one = profile.imagpose_snr_weight == "min(SNR+1, gamma)/(SNR+1)"
        return (per_sample * self.schedule.min_snr_weights(timesteps, config.min_snr_gamma, plus_one)).mean()

    def _condition_latent(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A condition's VAE latent (unscaled): the posterior's mean, or a draw from it as published."""
        posterior = self.vae.encode(pixels).latent_dist
        return (posterior.sample(generator) if self.profile.imagpose_vae_latents == "sampled" else posterior.mode()).float()

    def fixed_batch_loss(self, indices: list[int], seed: int = 0) -> float:
        """The loss of the samples ``indices`` with fixed noise and timesteps (for watching progress)."""
        with torch.no_grad():
            return float(self.loss(self.load_batch(indices), torch.Generator(self.device).manual_seed(seed)))

    # -- the run -------------------------------------------------------------------------------

    def train(self) -> Path:
        """Train to ``max_steps``, writing checkpoints; returns the last checkpoint folder."""
        config, accelerator = self.config, self.accelerator
        log = _TrainingLog(self.output, accelerator.is_main_process, self.echo, self.tensorboard)
        if accelerator.is_main_process:
            left_out = ", ".join(f"{count} {what}" for what, count in self.canvases.left_out.items() if count)
            self.echo(
                f"phase {config.phase}: {len(self.canvases)} identities{f' ({left_out} left out)' if left_out else ''}; "
                f"{self.trained_parameters / 1e6:.2f} M parameters trained at lr {config.learning_rate:g}; "
                f"{accelerator.num_processes} process(es) x {config.batch_size} canvases x {config.gradient_accumulation_steps} "
                f"accumulation; steps {self.step} -> {config.max_steps}; precision {accelerator.mixed_precision}"
            )
            log.event(
                step=self.step, event="resumed" if self.step else "started", phase=config.phase,
                processes=accelerator.num_processes, config=config.as_dict(),
            )
        if self.step >= config.max_steps:
            self.echo(f"already at step {self.step} of {config.max_steps}")
            return checkpoints(self.output)[-1]
        loader = self._loader()
        self.model.train()
        # The main process shows the steps between the log lines, the project's way.
        bar = Progress(config.max_steps - self.step if accelerator.is_main_process else 0, f"phase {config.phase}")
        window_loss = torch.zeros((), device=self.device)
        window_steps, window_start = 0, time.perf_counter()
        last = None
        for step in range(self.step, config.max_steps):
            for micro in range(config.gradient_accumulation_steps):
                batch = next(loader)
                generator = torch.Generator(self.device).manual_seed(step_seed(config.seed, step, micro, accelerator.process_index))
                with accelerator.accumulate(self.model):
                    loss = self.loss(batch, generator)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(self.trainable, config.max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                window_loss += loss.detach() / config.gradient_accumulation_steps
            self.lr_schedule.step()
            self.step = step + 1
            window_steps += 1
            bar.update()
            if self.step % config.log_every == 0 or self.step == config.max_steps:
                mean_loss = accelerator.reduce(window_loss, "mean").item() / window_steps
                seconds = time.perf_counter() - window_start
                log.step(self.step, mean_loss, self.lr_schedule.get_last_lr()[0], window_steps * self._global_batch * config.gradient_accumulation_steps / seconds, _gpu_memory(self.device))
                window_loss.zero_()
                window_steps, window_start = 0, time.perf_counter()
            if self.step % config.checkpoint_every == 0 or self.step == config.max_steps:
                last = self.save()
        bar.close()
        log.close()
        return last

    def _loader(self):
        from torch.utils.data import DataLoader

        micro_batches = range(self.step * self.config.gradient_accumulation_steps, self.config.max_steps * self.config.gradient_accumulation_steps)
        per_micro = self.config.gradient_accumulation_steps

        def indices():
            for number in micro_batches:
                yield self.batch_indices(*divmod(number, per_micro))

        loader = DataLoader(
            _Samples(self.canvases), batch_sampler=list(indices()), num_workers=self.config.workers, collate_fn=_collate,
            persistent_workers=False,
            # Only the workers' base seed is drawn from it (each sample is seeded by its index):
            # a generator of its own leaves torch's global one alone.
            generator=torch.Generator().manual_seed(self.config.seed),
        )
        return iter(loader)

    def save(self) -> Path:
        """Write ``checkpoint-<step>`` (main process), atomically; older ones beyond ``checkpoints_kept`` go."""
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        folder = self.output / f"{CHECKPOINT_PREFIX}{self.step}"
        if accelerator.is_main_process:
            model = accelerator.unwrap_model(self.model)
            frozen = [name for name in _modules(model) if name not in self.config.trained]
            state = {"optimizer": self.optimizer.state_dict(), "lr_schedule": self.lr_schedule.state_dict(), "step": self.step}
            record = {"step": self.step, "phase": self.config.phase, "started_from": str(self.source), "config": self.config.as_dict()}
            components = {**_modules(model), "vae": self.vae, "image_encoder": self.image_encoder, "scheduler": self.scheduler}
            save_checkpoint(
                folder, components, copy_from=self.source, copied=("vae", "image_encoder", *frozen),
                extra=lambda partial: _write_training_state(partial, state, record),
            )
            for old in checkpoints(self.output)[: -self.config.checkpoints_kept]:
                if old != folder:
                    shutil.rmtree(old)
            self.echo(f"checkpoint {folder}")
        accelerator.wait_for_everyone()
        return folder


def _write_training_state(folder: Path, state: dict, record: dict) -> None:
    torch.save(state, folder / TRAINING_STATE)
    (folder / TRAINING_RECORD).write_text(json.dumps(record, indent=2) + "\n")


class _Samples:
    def __init__(self, canvases: IdentityCanvases):
        self.canvases = canvases

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return self.canvases.sample(index)


def _collate(samples: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(np.stack([sample[key] for sample in samples])) for key in samples[0]}


def _gpu_memory(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


class _TrainingLog:
    """``logs/train.jsonl`` and the console (main process only); TensorBoard if asked and installed."""

    def __init__(self, output: Path, main: bool, echo: Callable[[str], None], tensorboard: bool = False):
        self.main, self.echo = main, echo
        self.path = output / "logs" / "train.jsonl"
        self.writer = None
        if main:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if main and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                echo("note: TensorBoard is not installed (pip install tensorboard); logging to the JSONL file and the console only")
            else:
                self.writer = SummaryWriter(str(output / "tensorboard"))

    def _write(self, record: dict) -> None:
        with self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")

    def event(self, **record) -> None:
        if self.main:
            self._write({"time": time.time(), **record})

    def step(self, step: int, loss: float, lr: float, samples_per_s: float, gpu_memory_gb: float | None) -> None:
        if not self.main:
            return
        record = {"step": step, "loss": loss, "lr": lr, "samples_per_s": round(samples_per_s, 3), "gpu_memory_gb": gpu_memory_gb}
        self._write({"time": time.time(), **record})
        memory = f", {gpu_memory_gb} GiB" if gpu_memory_gb is not None else ""
        self.echo(f"step {step}: loss {loss:.4f}, lr {lr:.2e}, {samples_per_s:.2f} samples/s{memory}")
        if self.writer is not None:
            for key in ("loss", "lr", "samples_per_s"):
                self.writer.add_scalar(f"train/{key}", record[key], step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
