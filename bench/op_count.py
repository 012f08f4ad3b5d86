"""Launch-overhead proxy that needs no GPU (not a test): aten operations per LoRA training step
and per denoising step of the *full-size* SDXL UNet.

    python bench/op_count.py              # full-size UNet from bench/configs, CPU, about 7 minutes
    python bench/op_count.py --json out.json

At full size on an H100 the LoRA step is launch-bound: every aten operation that reaches a
kernel costs a launch (~5-10 us of host time) whatever its size, so the number of operations per
step bounds the step time from below. The count does not depend on the device or the weight
values, so it is taken here on the CPU: the UNet is built from its published config with
uninitialised weights (``to_empty``: values do not change which operations run), in bf16 with
bf16 autocast (the CPU counterpart of the GPU's fp16 autocast: the same casts are inserted), at a
tiny latent so that the compute is cheap, under a ``TorchDispatchMode`` that counts every aten
operation below autograd and autocast, backward and optimizer included.

The generator's UNet step is counted with the Visual Consistency Module and a subject LoRA at
the published scales: recomputing the identity's keys and values (the first call, what every
step did before they were kept), keeping them, and with the LoRA merged into the weights; the
stock UNet step is counted in the same run for the ratio.

Three numbers per step: all aten operations; "kernels", those that launch work on a GPU (views,
allocations and metadata-only operations left out); and ``_to_copy`` (dtype casts), the share
the profiler found largest. The training step is the real ``LoraTrainer.train`` step (two runs of
1 and 2 steps; the difference is one step, so adapter set-up cancels out), counted for the
published step and the fast one in the same run.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

import oneposetrans  # noqa: F401  (sets HF_HUB_OFFLINE before the hub libraries load)
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from oneposetrans.finetune import FinetuneCase, FinetuneSettings, LoraTrainer
from oneposetrans.profiles import DEFAULT
from oneposetrans.settings import published_ip_scales, published_lora_scales
from oneposetrans.testing import cached_tiny_models
from oneposetrans.vcm import cross_attention_processor_indices, install, set_ip_scales, VCMAttnProcessor, VisualConsistencyModule

CONFIGS = Path(__file__).parent / "configs"
CAPTION = "A woman with face, orange spacesuit with mission patches"
# Operations that launch no kernel on a GPU: allocations, metadata, host-side reads.
NO_KERNEL = {"empty", "empty_strided", "empty_like", "detach", "lift_fresh", "_local_scalar_dense", "set_", "resize_"}


class OpCounter(TorchDispatchMode):
    """Counts aten operations by name while active (autograd's backward included)."""

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter = collections.Counter()
        self.kernels = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.counts[name] += 1
        if not func.is_view and name not in NO_KERNEL:
            self.kernels += 1
        return func(*args, **(kwargs or {}))

    def summary(self) -> dict:
        return {"aten_ops": sum(self.counts.values()), "kernel_ops": self.kernels, "casts": self.counts["_to_copy"],
                "counts": dict(self.counts)}


def _config(name: str) -> dict:
    return {k: v for k, v in json.loads((CONFIGS / name).read_text()).items() if not k.startswith("_")}


def full_size_unet(dtype: torch.dtype):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**_config("sdxl_unet.json"))
    return unet.to_empty(device="cpu").to(dtype)


def _difference(first: dict, second: dict) -> dict:
    counts = collections.Counter(second["counts"])
    counts.subtract(first["counts"])
    return {
        "aten_ops": second["aten_ops"] - first["aten_ops"],
        "kernel_ops": second["kernel_ops"] - first["kernel_ops"],
        "casts": second["casts"] - first["casts"],
        "counts": {name: count for name, count in counts.items() if count > 0},
    }


def training_step_ops(unet, latent_side: int, fast_step: bool) -> dict:
    """One step of ``LoraTrainer.train`` (published recipe: rank 32, batch 2, bf16), with the
    published step (fp32 LoRA weights under autocast, torch's default AdamW) or the fast one."""
    from diffusers import AutoencoderKL, DDPMScheduler
    from PIL import Image
    from skimage import data
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    text = _config("clip_text_encoders.json")
    tokenizers = cached_tiny_models() / "RealVisXL_V4.0"  # the real CLIP BPE vocabulary
    with torch.device("meta"):
        vae = AutoencoderKL(**_config("sdxl_vae.json"))
    components = {
        "unet": unet,
        "vae": vae.to_empty(device="cpu"),
        # Built for real: their position-id buffers must hold indices (they run once per case, outside the steps).
        "text_encoder": CLIPTextModel(CLIPTextConfig(**text["text_encoder"])),
        "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**text["text_encoder_2"])),
        "tokenizer": CLIPTokenizer.from_pretrained(tokenizers, subfolder="tokenizer"),
        "tokenizer_2": CLIPTokenizer.from_pretrained(tokenizers, subfolder="tokenizer_2"),
        "noise_scheduler": DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    }
    settings = FinetuneSettings(mixed_precision="bf16", resolution=latent_side * 8)
    trainer = LoraTrainer(components, settings, torch.device("cpu"), DEFAULT.replace(fast_step=fast_step))
    trainer.encode_caption(CAPTION)  # once per case, outside the steps
    photo = Path("/tmp") / "op_count_source.png"
    Image.fromarray(data.astronaut()).save(photo)
    counted = []
    for steps in (1, 2):
        trainer.settings = FinetuneSettings(mixed_precision="bf16", resolution=latent_side * 8, steps=steps)
        with OpCounter() as counter:
            trainer.train(FinetuneCase("count", [photo], CAPTION))
        trainer.discard()
        counted.append(counter.summary())
    return _difference(*counted)


@torch.no_grad()
def denoising_step_ops(unet, latent_side: int) -> dict:
    """One UNet call of the generator's loop: batch 2 (CFG), 77 text tokens + 4 image tokens."""
    dtype = next(unet.parameters()).dtype
    latents = torch.zeros(2, 4, latent_side, latent_side, dtype=dtype)
    tokens = torch.zeros(2, 81, 2048, dtype=dtype)
    added = {"text_embeds": torch.zeros(2, 1280, dtype=dtype), "time_ids": torch.zeros(2, 6, dtype=dtype)}
    with OpCounter() as counter:
        unet(latents, torch.tensor(500), encoder_hidden_states=tokens, added_cond_kwargs=added)
    return counter.summary()


def _with_vcm(unet, latent_side: int):
    """Install the VCM as the pipeline does (published image scales, the face at text position 4)
    and return one CFG-batch UNet call of the generator's loop."""
    dtype = next(unet.parameters()).dtype
    widths = {str(index): unet.get_submodule(name.removesuffix(".processor")).to_q.out_features
              for name, index in cross_attention_processor_indices(unet).items()}
    with torch.device("meta"):
        vcm = VisualConsistencyModule(
            layer_widths=widths,
            cross_attention_dim=unet.config.cross_attention_dim,
            # IP-Adapter SDXL ViT-H (4 tokens) and InstantID's Resampler, at their published sizes.
            image_projection_config={"image_embed_dim": 1024, "cross_attention_dim": 2048, "num_image_text_embeds": 4},
            face_projection_config={"embed_dims": 512, "output_dims": 2048, "hidden_dims": 1280, "depth": 4, "dim_head": 64,
                                    "heads": 20, "num_queries": 16, "ffn_ratio": 4},
        )
    vcm.to_empty(device="cpu").to(dtype)
    processors = install(unet, vcm)
    set_ip_scales(processors, published_ip_scales(), 0.0)
    latents = torch.zeros(2, 4, latent_side, latent_side, dtype=dtype)
    text = torch.zeros(2, 77, 2048, dtype=dtype)
    added = {
        "text_embeds": torch.zeros(2, 1280, dtype=dtype), "time_ids": torch.zeros(2, 6, dtype=dtype),
        "image_embeds": [torch.zeros(2, 1, 1024, dtype=dtype), torch.zeros(2, 1, 1, 512, dtype=dtype)],
    }
    attention = {"face_positions": torch.tensor([4, 4])}
    return lambda: unet(latents, torch.tensor(500), encoder_hidden_states=text, added_cond_kwargs=added, cross_attention_kwargs=attention)


@torch.no_grad()
def generator_step_ops(unet, latent_side: int) -> dict:
    """UNet calls of the OnePoseTrans generator: the VCM as the pipeline installs it (77 text
    tokens; the image prompt's CLIP embeds and the face's ArcFace embedding projected by the
    UNet's ``encoder_hid_proj`` into 4 and 16 tokens, the published image scales, the face at
    text position 4) and a rank-32 subject LoRA at the published block scales. The projections
    run once per identity (the first call, not counted); then a call that computes the
    identity's K/V (what every step cost before they were kept), later calls that reuse them,
    and the same with the LoRA merged into the weights."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import BaseTunerLayer

    dtype = next(unet.parameters()).dtype
    call = _with_vcm(unet, latent_side)
    unet.add_adapter(LoraConfig(r=32, lora_alpha=32, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"]), adapter_name="subject")
    unet.set_adapters(["subject"], weights=[published_lora_scales()])
    unet.to(dtype)

    def count() -> dict:
        with OpCounter() as counter:
            call()
        return counter.summary()

    def forget_keys_and_values() -> None:
        for processor in unet.attn_processors.values():
            if isinstance(processor, VCMAttnProcessor):
                processor._kept.entries.clear()

    count()  # the identity's tokens, once
    forget_keys_and_values()
    first, steady = count(), count()
    for module in unet.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge(adapter_names=["subject"])
    forget_keys_and_values()
    count()
    fused = count()
    unet.delete_adapters("subject")
    return {"identity_first_call_unfused": first, "steady_step_unfused": steady, "steady_step_fused": fused}


# Profiler events that launch no kernel: views, allocations, metadata, and composite operations
# whose work shows up as their children.
NOT_LAUNCHES = NO_KERNEL | {
    "as_strided", "as_strided_", "view", "_unsafe_view", "_reshape_alias", "view_as", "reshape", "transpose", "t", "permute",
    "unsqueeze", "squeeze", "expand", "expand_as", "slice", "select", "split", "chunk", "unbind", "narrow", "unflatten",
    "flatten", "alias", "resolve_conj", "resolve_neg", "contiguous", "to", "linear", "dropout",
}


def profiled_launches(call) -> dict:
    """Kernel launches of one call from torch's profiler: the leaf aten operations (eager code and
    the extern kernels of compiled graphs, matrix products and attention) and the kernels inductor
    generated (its ``cpp_fused_*`` kernels here, Triton kernels on a GPU), each call counted. The
    dispatch-mode count above cannot see inside compiled code (dynamo runs a frame eagerly while a
    dispatch mode is active), so both paths are counted this way."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        call()
    aten = generated = 0
    for event in profiler.events():
        if "cpp_fused" in event.name or event.name.startswith("triton_"):
            generated += 1
        elif event.name.startswith("aten::") and event.name[6:] not in NOT_LAUNCHES and not any(
            child.name.startswith("aten::") for child in event.cpu_children
        ):
            aten += 1
    return {"aten_launches": aten, "generated_kernels": generated, "launches": aten + generated}


@torch.no_grad()
def compiled_generator_step_ops(latent_side: int) -> dict:
    """The default profile's generator step (VCM, LoRA merged: plain weights) eager and with its
    transformer and ResNet blocks compiled by inductor as ``--compile`` does (its CPU backend here:
    the fusion differs from Triton's on a GPU, the structure does not), counted by the profiler."""
    import torch._inductor.config as inductor_config
    from oneposetrans.pipeline_stable_diffusion_xl_oneposetrans import REPEATED_BLOCKS

    inductor_config.cpp.enable_kernel_profile = True  # each generated kernel call becomes a profiler event
    unet = full_size_unet(torch.bfloat16).eval()
    call = _with_vcm(unet, latent_side)
    call()  # the identity's tokens, keys and values, once
    eager = profiled_launches(call)
    for block in unet.modules():
        if isinstance(block, REPEATED_BLOCKS):
            block.compile(dynamic=False)
    started = time.perf_counter()
    call()
    compile_seconds = time.perf_counter() - started
    compiled = profiled_launches(call)
    return {"eager": eager, "compiled": compiled, "compile_s_on_this_cpu": compile_seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latent", type=int, default=8, help="latent side for the count (ops do not depend on it)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--no-compiled", dest="compiled", action="store_false", help="skip the compiled generator step (minutes of compilation)")
    arguments = parser.parse_args()
    started = time.perf_counter()
    unet = full_size_unet(torch.bfloat16)
    unet.eval()
    parameters = sum(p.numel() for p in unet.parameters())
    denoise = denoising_step_ops(unet, arguments.latent)
    published = training_step_ops(unet, arguments.latent, fast_step=False)
    fast = training_step_ops(unet, arguments.latent, fast_step=True)
    generator = generator_step_ops(unet, arguments.latent)
    del unet
    compiled = compiled_generator_step_ops(arguments.latent) if arguments.compiled else None
    figures = {
        "torch": torch.__version__,
        "training_step_published": published,
        "training_step_fast": fast,
        "denoising_step_unet": denoise,
        **{f"generator_{key}": value for key, value in generator.items()},
        **({"generator_steady_step_fused_profiled": compiled} if compiled else {}),
    }
    print(f"full-size SDXL UNet ({parameters / 1e9:.2f} B parameters), torch {torch.__version__}, "
          f"counted on the CPU in {time.perf_counter() - started:.0f} s")
    rows = (
        ("LoRA training step, published (fp32 LoRA under autocast, per-tensor AdamW)", published),
        ("LoRA training step, fast (default profile)", fast),
        ("denoising step, stock UNet, CFG batch", denoise),
        ("generator step, VCM + LoRA unfused, recomputing the identity's K/V (before)", generator["identity_first_call_unfused"]),
        ("generator step, VCM + LoRA unfused, K/V kept", generator["steady_step_unfused"]),
        ("generator step, VCM + LoRA merged, K/V kept (default profile)", generator["steady_step_fused"]),
    )
    for title, figure in rows:
        print(f"  {title}: {figure['aten_ops']} aten ops, {figure['kernel_ops']} kernel ops, {figure['casts']} casts")
        top = collections.Counter(figure["counts"]).most_common(8)
        print(f"    most frequent: {', '.join(f'{name} {count}' for name, count in top)}")
    print(f"  training step, fast / published: {fast['kernel_ops'] / published['kernel_ops']:.2f}x kernel ops, "
          f"{fast['aten_ops'] / published['aten_ops']:.2f}x aten ops")
    before, after = generator["identity_first_call_unfused"], generator["steady_step_fused"]
    print(f"  generator step / stock UNet step, kernel ops: before {before['kernel_ops'] / denoise['kernel_ops']:.2f}x, "
          f"after {after['kernel_ops'] / denoise['kernel_ops']:.2f}x")
    if compiled:
        eager_launches, compiled_launches = compiled["eager"], compiled["compiled"]
        print(f"  generator step, default profile, by the profiler: eager {eager_launches['launches']} launches; "
              f"blocks compiled {compiled_launches['launches']} ({compiled_launches['aten_launches']} aten, "
              f"{compiled_launches['generated_kernels']} generated kernels), "
              f"{compiled_launches['launches'] / eager_launches['launches']:.2f}x; compiled in {compiled['compile_s_on_this_cpu']:.0f} s here")
    if arguments.json:
        arguments.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
