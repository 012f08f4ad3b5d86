"""Fast tests of ``StableDiffusionXLOnePoseTransPipeline`` as a diffusers pipeline, in the style of
diffusers' own (components built in code, one behaviour a test): the image prompt against
diffusers' IP-Adapter, the method's state from construction, saving and loading, and the standard
features with the VCM loaded. Every call form of the parent: tests/pipelines/test_call_forms.py;
the method itself (VCM tokens, profiles, LayerDiffuse): tests/test_pipeline.py."""

import inspect
import json
import re

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLControlNetPipeline
from PIL import Image

from oneposetrans import vcm
from oneposetrans.pipeline_stable_diffusion_xl_oneposetrans import StableDiffusionXLOnePoseTransPipeline
from tests.pipelines.components import (
    CAPTION, assert_same, face, get_dummy_components, get_dummy_inputs, images, parent_components,
)


def _pipelines(kit, vcm_loaded: bool = False):
    """Ours and the parent, each on its own copy of the same components."""
    ours = StableDiffusionXLOnePoseTransPipeline(**get_dummy_components(kit, vcm_loaded))
    parent = StableDiffusionXLControlNetPipeline(**parent_components(get_dummy_components(kit)))
    for pipe in (ours, parent):
        pipe.set_progress_bar_config(disable=True)
    return ours, parent


def _identity_inputs(**overrides):
    return get_dummy_inputs(ip_adapter_image=Image.new("RGB", (64, 64), "orange"), face_embedding=face(), **overrides)


# -- the image prompt: the parent's IP-Adapter, and the VCM's branch against it ----------------


def _with_diffusers_ip_adapter(pipe, models, scale):
    pipe.load_ip_adapter(str(models / "IP-Adapter"), subfolder="sdxl_models", weight_name="ip-adapter_sdxl_vit-h.safetensors",
                         image_encoder_folder="models/image_encoder")
    pipe.set_ip_adapter_scale(scale)


def test_without_vcm_the_image_prompt_is_the_parents_ip_adapter(tiny_models):
    ours, parent = _pipelines(tiny_models)
    for pipe in (ours, parent):
        _with_diffusers_ip_adapter(pipe, tiny_models, 0.6)
    image = Image.new("RGB", (64, 64), "orange")
    assert_same(ours(**get_dummy_inputs(ip_adapter_image=image)), parent(**get_dummy_inputs(ip_adapter_image=image)))
    embeds = parent.prepare_ip_adapter_image_embeds(image, None, "cpu", 1, True)
    assert_same(ours(**get_dummy_inputs(ip_adapter_image_embeds=embeds)), parent(**get_dummy_inputs(ip_adapter_image=image)))


@pytest.mark.parametrize("given", ["image", "embeds"])
def test_vcm_image_branch_at_one_scale_equals_diffusers_ip_adapter(given, tiny_models):
    """The VCM's image branch is IP-Adapter attention: at one scale everywhere it gives what
    diffusers' IP-Adapter gives with the same checkpoint (the method's scales are per block)."""
    ours, parent = _pipelines(tiny_models, vcm_loaded=True)
    _with_diffusers_ip_adapter(parent, tiny_models, 0.6)
    ours.set_ip_adapter_scale(0.6)
    image = Image.new("RGB", (64, 64), "orange")
    expected = parent(**get_dummy_inputs(ip_adapter_image=image))
    prompt_image = dict(ip_adapter_image=image) if given == "image" else dict(
        ip_adapter_image_embeds=parent.prepare_ip_adapter_image_embeds(image, None, "cpu", 1, True)
    )
    got = ours(**get_dummy_inputs(**prompt_image))
    assert_same(got, expected)
    assert np.abs(images(got) - images(ours(**get_dummy_inputs()))).max() > 1e-2  # the image prompt acts


def test_face_with_prompt_embeds_only_is_skipped_with_a_note(tiny_models):
    ours, _ = _pipelines(tiny_models, vcm_loaded=True)
    embeds = ours.encode_prompt(CAPTION, device="cpu", do_classifier_free_guidance=True, negative_prompt="low quality, bad quality")
    encoded = dict(zip(("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"), embeds))
    output = ours(**get_dummy_inputs(prompt=None, negative_prompt=None, face_embedding=face(), **encoded))
    assert any("no prompt text" in note for note in output.notes)
    assert_same(output, ours(**get_dummy_inputs()))


# -- the method's state from __init__; saving and loading ----------------------------------------


def _from_kit(models, profile="default"):
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_pretrained(models / "controlnet-openpose-sdxl-1.0")
    pipe = StableDiffusionXLOnePoseTransPipeline.from_pretrained(
        models / "RealVisXL_V4.0", controlnet=controlnet, add_watermarker=False, profile=profile
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load_vcm(pipe, models):
    pipe.load_vcm(
        models / "IP-Adapter/sdxl_models/ip-adapter_sdxl_vit-h.safetensors", models / "IP-Adapter/models/image_encoder",
        models / "InstantID/ip-adapter.bin",
    )


def test_state_exists_from_construction_and_from_pretrained(tiny_models):
    built = StableDiffusionXLOnePoseTransPipeline(**get_dummy_components(tiny_models))
    for pipe in (built, _from_kit(tiny_models)):
        assert pipe.vcm is None and pipe.vcm_processors == {} and pipe.transparent_decoder is None
        assert pipe.profile.name == "default" and not pipe.config.layerdiffuse_offsets_merged
        pipe.set_ip_adapter_scale(0.5)  # diffusers' own, with no adapter loaded: nothing to scale
        identity = pipe.encode_identity(CAPTION, face_embedding=face())
        assert not identity.has_image and not identity.has_face


def test_the_vcm_is_a_component_given_to_the_constructor(tiny_models):
    """As diffusers' pipelines take their components: the VCM passed in is installed, at the
    published image-prompt scales; ``load_vcm`` of the published files gives the same weights."""
    components = get_dummy_components(tiny_models, vcm=True)
    pipe = StableDiffusionXLOnePoseTransPipeline(**components)
    assert pipe.vcm is components["vcm"] and len(pipe.vcm_processors) == len(vcm.cross_attention_processor_indices(pipe.unet))
    scales = {name.split(".transformer")[0]: p.ip_scale for name, p in pipe.vcm_processors.items() if p.ip_scale}
    assert scales == {"up_blocks.0.attentions.0": 0.4, "up_blocks.0.attentions.1": 1.0}
    loaded = _from_kit(tiny_models)
    _load_vcm(loaded, tiny_models)
    built, read = pipe.vcm.state_dict(), loaded.vcm.state_dict()
    assert built.keys() == read.keys() and all(torch.equal(built[k], read[k]) for k in built)


def test_save_pretrained_round_trips_the_plain_pipeline(tiny_models, tmp_path):
    ours, _ = _pipelines(tiny_models)
    ours.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved/model_index.json").read_text())["vcm"] == [None, None]
    again = StableDiffusionXLOnePoseTransPipeline.from_pretrained(tmp_path / "saved")
    again.set_progress_bar_config(disable=True)
    assert_same(again(**get_dummy_inputs()), ours(**get_dummy_inputs()))


@pytest.mark.parametrize("profile", ["default", "reference"])
def test_save_pretrained_round_trips_vcm_layerdiffuse_and_scales(profile, tiny_models, tmp_path):
    # Loaded from files, as the reloaded one is: weights that were copied instead sit
    # differently in memory, which moves the CPU kernels' rounding by about 1e-5.
    ours = _from_kit(tiny_models, profile)
    ours.load_layerdiffuse(tiny_models / "LayerDiffuse", encoder=True)
    _load_vcm(ours, tiny_models)
    ours.set_ip_adapter_scale({"up_blocks.0.attentions.1": 0.7, "down_blocks": 0.2})
    inputs = lambda: _identity_inputs(output_type="pt")  # noqa: E731
    expected = ours(**inputs())
    ours.save_pretrained(tmp_path / "saved")
    # The UNet is saved as diffusers knows it; the VCM and LayerDiffuse are components of their own.
    assert not any(".processor." in key or "encoder_hid_proj" in key for key in _saved_unet_keys(tmp_path / "saved"))
    assert json.loads((tmp_path / "saved/unet/config.json").read_text())["encoder_hid_dim_type"] is None
    index = json.loads((tmp_path / "saved/model_index.json").read_text())
    assert index["vcm"] == ["oneposetrans.vcm", "VisualConsistencyModule"]
    assert index["transparent_decoder"] == ["oneposetrans.layerdiffuse", "TransparentDecoderUNet"]
    assert index["profile"] == profile and index["layerdiffuse_offsets_merged"] is True
    again = StableDiffusionXLOnePoseTransPipeline.from_pretrained(tmp_path / "saved")
    again.set_progress_bar_config(disable=True)
    assert again.profile.name == profile and again.config.layerdiffuse_offsets_merged and again.transparent_encoder is not None
    got = again(**inputs())
    assert got.images.shape[1] == 4  # RGBA: LayerDiffuse came back
    assert_same(got, expected)
    again.load_layerdiffuse(tiny_models / "LayerDiffuse")  # offsets already in the saved UNet: not merged twice
    assert_same(again(**inputs()), expected)
    again.save_pretrained(tmp_path / "again")  # a loaded pipeline saves again
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == sorted(p.name for p in (tmp_path / "saved").iterdir())


def _saved_unet_keys(folder):
    from safetensors import safe_open

    with safe_open(str(folder / "unet/diffusion_pytorch_model.safetensors"), "pt") as weights:
        return list(weights.keys())


def test_save_pretrained_refuses_a_subject_lora(tiny_models, tmp_path):
    from safetensors.torch import save_file

    ours, _ = _pipelines(tiny_models, vcm_loaded=True)
    key = next(k for k in ours.unet.state_dict() if k.endswith("attn1.to_q.weight"))
    weight = ours.unet.state_dict()[key]
    base = f"unet.{key.removesuffix('.weight')}"
    save_file({f"{base}.lora.down.weight": torch.zeros(4, weight.shape[1]), f"{base}.lora.up.weight": torch.zeros(weight.shape[0], 4)},
              tmp_path / "subject.safetensors")
    ours.load_subject_lora(tmp_path / "subject.safetensors", 1.0)
    with pytest.raises(ValueError, match="unload_subject_lora"):
        ours.save_pretrained(tmp_path / "saved")
    ours.unload_subject_lora()
    ours.save_pretrained(tmp_path / "saved")


def test_from_pipe_of_a_stock_pipeline(tiny_models):
    components = get_dummy_components(tiny_models, vcm=True)
    stock = StableDiffusionXLControlNetPipeline(**parent_components(components))
    stock.set_progress_bar_config(disable=True)
    expected = stock(**get_dummy_inputs())
    ours = StableDiffusionXLOnePoseTransPipeline.from_pipe(stock)
    ours.set_progress_bar_config(disable=True)
    assert ours.unet is stock.unet and ours.vcm is None
    assert_same(ours(**get_dummy_inputs()), expected)
    _load_vcm(ours, tiny_models)
    assert_same(ours(**get_dummy_inputs()), expected)  # loaded, extras off
    assert np.abs(images(ours(**get_dummy_inputs(face_embedding=face()))) - images(expected)).max() > 1e-3


# -- diffusers' features with the VCM loaded ------------------------------------------------------


def test_model_cpu_offload_with_vcm(tiny_models):
    ours = _from_kit(tiny_models)
    _load_vcm(ours, tiny_models)
    ours.load_layerdiffuse(tiny_models / "LayerDiffuse")
    expected = ours(**_identity_inputs(output_type="pt"))
    # No accelerator here: the offload hooks run with the CPU as the execution device. (Moving
    # the weights between "devices" moves their memory, and with it the kernels' rounding.)
    ours.enable_model_cpu_offload(device="cpu")
    assert ours._execution_device == torch.device("cpu:0")
    got = ours(**_identity_inputs(output_type="pt"))
    assert_same(got, expected, tolerance=1e-4)
    assert all(hasattr(getattr(ours, name), "_hf_hook") for name in ("unet", "image_encoder", "transparent_decoder"))


def test_attention_slicing_keeps_the_vcm(tiny_models):
    from diffusers.models.attention_processor import SlicedAttnProcessor

    ours, parent = _pipelines(tiny_models, vcm_loaded=True)
    expected = ours(**_identity_inputs())
    ours.enable_attention_slicing(1)
    processors = ours.unet.attn_processors
    assert ours.vcm_processors and all(processor.slice_size == 1 for processor in ours.vcm_processors.values())
    assert isinstance(vcm.unwrapped(processors["down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor"]), SlicedAttnProcessor)
    assert all(isinstance(p, SlicedAttnProcessor) for p in ours.controlnet.attn_processors.values())
    assert_same(ours(**_identity_inputs()), expected)
    parent.enable_attention_slicing(1)
    assert_same(ours(**get_dummy_inputs()), parent(**get_dummy_inputs()))  # extras off, both sliced
    ours.disable_attention_slicing()
    assert all(p.slice_size is None for p in ours.vcm_processors.values())
    assert_same(ours(**_identity_inputs()), expected)


def test_vae_slicing_and_tiling(tiny_models):
    ours, parent = _pipelines(tiny_models, vcm_loaded=True)
    for pipe in (ours, parent):
        pipe.vae.enable_slicing()  # diffusers 0.42 moved these from the pipeline to the VAE
        pipe.vae.enable_tiling()
    assert_same(ours(**get_dummy_inputs(num_images_per_prompt=2)), parent(**get_dummy_inputs(num_images_per_prompt=2)))
    ours.load_layerdiffuse(tiny_models / "LayerDiffuse")
    rgba = ours(**_identity_inputs(num_images_per_prompt=2)).images
    assert rgba.shape == (2, 128, 64, 4)


@pytest.mark.parametrize("scheduler", ["DPMSolverMultistepScheduler", "EulerAncestralDiscreteScheduler", "LCMScheduler"])
def test_other_schedulers(scheduler, tiny_models):
    import diffusers

    ours, parent = _pipelines(tiny_models, vcm_loaded=True)
    for pipe in (ours, parent):
        pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    assert_same(ours(**get_dummy_inputs()), parent(**get_dummy_inputs()))
    with_identity = ours(**_identity_inputs()).images
    assert np.isfinite(with_identity).all() and np.abs(with_identity - images(parent(**get_dummy_inputs()))).max() > 1e-3


def test_fuse_qkv_projections_keeps_the_vcm(tiny_models):
    ours, _ = _pipelines(tiny_models, vcm_loaded=True)
    expected = ours(**_identity_inputs())
    ours.fuse_qkv_projections()
    processors = ours.unet.attn_processors
    assert len(ours.vcm_processors) == len([n for n in processors if n.endswith("attn2.processor")])
    assert type(vcm.unwrapped(processors["down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor"])).__name__ == "FusedAttnProcessor2_0"
    assert_same(ours(**_identity_inputs()), expected, tolerance=1e-4)
    ours.unfuse_qkv_projections()
    assert len(ours.vcm_processors) == len([n for n in processors if n.endswith("attn2.processor")])


def test_progress_bar_config(tiny_models, capsys):
    ours, _ = _pipelines(tiny_models)
    ours.set_progress_bar_config(disable=False)
    ours(**get_dummy_inputs())
    assert "2/2" in capsys.readouterr().err
    ours.set_progress_bar_config(disable=True)
    ours(**get_dummy_inputs())
    assert "2/2" not in capsys.readouterr().err


def test_unload_ip_adapter_removes_the_vcm(tiny_models):
    ours, parent = _pipelines(tiny_models, vcm_loaded=True)
    ours.unload_ip_adapter()
    assert ours.vcm is None and ours.vcm_processors == {} and ours.unet.encoder_hid_proj is None
    assert not any(".processor." in key for key in ours.unet.state_dict())
    assert_same(ours(**get_dummy_inputs()), parent(**get_dummy_inputs()))


def test_call_docstring_documents_every_argument():
    doc = StableDiffusionXLOnePoseTransPipeline.__call__.__doc__
    documented = set(re.findall(r"^\s{12}(\w+) \(", doc, re.MULTILINE))
    arguments = set(inspect.signature(StableDiffusionXLOnePoseTransPipeline.__call__).parameters) - {"self", "kwargs"}
    assert arguments == documented
    assert set(inspect.signature(StableDiffusionXLControlNetPipeline.__call__).parameters) <= arguments | {"self", "kwargs"}


# Output pixels at seed 0, as diffusers' fast tests pin theirs: the tests above
# compare ours with the parent, these catch a change of the numbers themselves. They move when the
# tiny kit or a pinned library changes; then check the change and pin the new values.
EXPECTED_SLICES = {
    "plain": [0.5878, 0.3053, 0.632, 0.3077, 0.389, 0.2239, 0.7486, 0.5533, 0.8311,
              0.554, 0.5076, 0.3618, 0.8567, 0.4781, 0.8156, 0.645, 0.4377, 0.3966],
    "vcm_identity_latents": [-2.304, -2.2917, -0.3147, 0.5643, -2.9388, -0.3267, -2.4174, -4.0376, 0.8072,
                             0.5576, 1.1455, 1.8988, 2.8703, 7.4595, 1.4071, -1.5172, 0.2389, -0.2764],
}


@pytest.mark.parametrize("case", list(EXPECTED_SLICES))
def test_output_slice_is_pinned(case, tiny_models):
    pipe = StableDiffusionXLOnePoseTransPipeline(**get_dummy_components(tiny_models, vcm=case != "plain"))
    pipe.set_progress_bar_config(disable=True)
    inputs = get_dummy_inputs()
    if case == "vcm_identity_latents":
        # The identity's effect lives in the latents; the transparent decoder has its own tests.
        pipe.load_layerdiffuse(tiny_models / "LayerDiffuse")
        inputs.update(ip_adapter_image=Image.new("RGB", (64, 64), "orange"), face_embedding=face(), output_type="latent")
        latents = pipe(**inputs).images
        values = torch.cat([latents[0, 0, :3, :3].flatten(), latents[0, -1, :3, :3].flatten()]).float().numpy()
    else:
        found = pipe(**inputs).images
        height, width = found.shape[1:3]
        # The middle 3x3 pixels of the first and the last channel.
        values = found[0, height // 2 - 1 : height // 2 + 2, width // 2 - 1 : width // 2 + 2][..., [0, -1]].flatten()
    assert np.abs(values - np.array(EXPECTED_SLICES[case])).max() < 1e-3
