"""Every call form of the parent ``StableDiffusionXLControlNetPipeline`` gives the parent's output,
with and without the VCM loaded, and the forms beyond the parent (several poses of one identity)
do what they say. Components are built in code (``components.get_dummy_components``)."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLControlNetPipeline

from oneposetrans.pipeline_stable_diffusion_xl_oneposetrans import StableDiffusionXLOnePoseTransPipeline
from tests.pipelines.components import (
    CAPTION, NEGATIVE, TOLERANCE, assert_same, get_dummy_components, get_dummy_inputs, images, parent_components, poses,
)


def _tensor(pose):
    return torch.from_numpy(np.asarray(pose, np.float32) / 255).permute(2, 0, 1)


def _encoded(pipe):
    embeds = pipe.encode_prompt(CAPTION, device="cpu", do_classifier_free_guidance=True, negative_prompt=NEGATIVE)
    return dict(zip(("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"), embeds))


CALL_FORMS = {
    "pil": lambda pipe: {},
    "height_width": lambda pipe: dict(height=64, width=64),
    "numpy_nhwc": lambda pipe: dict(image=(np.asarray(poses()[0], np.float32) / 255)[None]),
    "numpy_list": lambda pipe: dict(image=[np.asarray(poses()[0], np.float32) / 255]),
    "torch_nchw": lambda pipe: dict(image=_tensor(poses()[0])[None]),
    "torch_list": lambda pipe: dict(image=[_tensor(poses()[0])]),
    "torch_per_prompt": lambda pipe: dict(prompt=[CAPTION, "A man"], image=torch.stack([_tensor(p) for p in poses()])),
    "num_images_per_prompt": lambda pipe: dict(num_images_per_prompt=2),
    "generator_list": lambda pipe: dict(num_images_per_prompt=2, generator=[torch.Generator().manual_seed(s) for s in (1, 2)]),
    "no_generator_with_latents": lambda pipe: dict(generator=None, latents=torch.randn(1, 4, 16, 8, generator=torch.Generator().manual_seed(3))),
    "prompt_embeds": lambda pipe: dict(prompt=None, negative_prompt=None, **_encoded(pipe)),
    "prompt_2": lambda pipe: dict(prompt_2="a photo", negative_prompt_2="blurry"),
    "prompt_list_one_pose": lambda pipe: dict(prompt=[CAPTION, "A man"], negative_prompt=["bad", "ugly"]),
    "prompt_per_pose": lambda pipe: dict(prompt=[CAPTION, "A man"], image=list(poses())),
    "guidance_off": lambda pipe: dict(guidance_scale=1.0),
    "guess_mode": lambda pipe: dict(guess_mode=True),
    "clip_skip": lambda pipe: dict(clip_skip=1),
    "control_window_and_scale": lambda pipe: dict(control_guidance_start=0.5, control_guidance_end=1.0, controlnet_conditioning_scale=0.5),
    "micro_conditioning": lambda pipe: dict(original_size=(256, 128), target_size=(128, 64), crops_coords_top_left=(8, 0),
                                            negative_original_size=(64, 64), negative_target_size=(64, 64)),
    "denoising_end": lambda pipe: dict(num_inference_steps=4, denoising_end=0.5),
    "eta": lambda pipe: dict(eta=0.5),
    "timesteps": lambda pipe: dict(num_inference_steps=None, timesteps=[999, 499]),
    "sigmas": lambda pipe: dict(num_inference_steps=None, sigmas=[14.6, 2.0]),
    "cross_attention_kwargs": lambda pipe: dict(cross_attention_kwargs={"scale": 0.5}),
    "output_pt": lambda pipe: dict(output_type="pt"),
    "output_pil": lambda pipe: dict(output_type="pil"),
    "output_latent": lambda pipe: dict(output_type="latent"),
    "return_tuple": lambda pipe: dict(return_dict=False),
}


def _pipelines(kit, vcm: bool):
    """Ours (with the VCM installed when ``vcm``) and the parent, each on its own copy of the
    same components: installing the VCM changes the UNet's processors."""
    ours = StableDiffusionXLOnePoseTransPipeline(**get_dummy_components(kit, vcm))
    parent = StableDiffusionXLControlNetPipeline(**parent_components(get_dummy_components(kit)))
    for pipe in (ours, parent):
        pipe.set_progress_bar_config(disable=True)
    return ours, parent


@pytest.fixture(scope="module")
def pipeline_pairs(tiny_models):
    """(ours, parent) without and with the VCM loaded, built once: no call form changes them."""
    return {vcm: _pipelines(tiny_models, vcm) for vcm in (False, True)}


@pytest.mark.parametrize("vcm_loaded", [False, True], ids=["plain", "vcm_loaded"])
@pytest.mark.parametrize("form", list(CALL_FORMS))
def test_call_form_equals_parent(form, vcm_loaded, pipeline_pairs):
    ours, parent = pipeline_pairs[vcm_loaded]
    expected = parent(**get_dummy_inputs(**CALL_FORMS[form](parent)))
    got = ours(**get_dummy_inputs(**CALL_FORMS[form](parent)))
    assert_same(got, expected)
    if form == "return_tuple":
        assert isinstance(got, tuple) and isinstance(expected, tuple)


def test_one_prompt_for_several_poses_of_one_identity_is_our_extension(pipeline_pairs):
    """One prompt and several poses (the parent refuses the form): each pose renders as it would alone."""
    ours, parent = pipeline_pairs[False]
    with pytest.raises(ValueError):
        parent(**get_dummy_inputs(image=list(poses())))
    seeds = lambda: [torch.Generator().manual_seed(s) for s in (5, 6)]  # noqa: E731
    together = ours(**get_dummy_inputs(image=list(poses()), generator=seeds())).images
    one_by_one = ours(**get_dummy_inputs(image=list(poses()), generator=seeds(), batch_size=1)).images
    alone = parent(**get_dummy_inputs(image=poses()[1], generator=torch.Generator().manual_seed(6))).images
    assert together.shape[0] == 2
    assert np.abs(together - one_by_one).max() <= 1e-4
    assert np.abs(one_by_one[1:] - alone).max() <= TOLERANCE


def test_mismatched_prompts_and_generators_are_refused_by_check_inputs(pipeline_pairs):
    ours, _ = pipeline_pairs[False]
    with pytest.raises(ValueError, match="3 prompts for 2 poses"):
        ours(**get_dummy_inputs(prompt=["a", "b", "c"], image=list(poses())))
    with pytest.raises(ValueError, match="3 generators for 2 poses x 1 images per prompt"):
        ours(**get_dummy_inputs(image=list(poses()), generator=[torch.Generator()] * 3))
    with pytest.raises(ValueError, match="transparent decoding needs load_layerdiffuse"):
        ours(**get_dummy_inputs(transparent=True))


def test_callback_on_step_end_sees_and_changes_the_same_tensors(pipeline_pairs):
    ours, parent = pipeline_pairs[False]

    def run(pipe):
        seen = []

        def callback(pipe, step, timestep, tensors):
            seen.append((step, int(timestep), tensors["latents"].clone()))
            return {"latents": tensors["latents"] * 0.9}

        output = pipe(**get_dummy_inputs(callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"]))
        return output, seen

    (expected, expected_seen), (got, got_seen) = run(parent), run(ours)
    assert_same(got, expected)
    assert [s[:2] for s in got_seen] == [s[:2] for s in expected_seen] and len(got_seen) == 2
    assert all(torch.allclose(a[2], b[2], atol=TOLERANCE) for a, b in zip(got_seen, expected_seen))


def test_lora_with_cross_attention_scale_equals_parent(tiny_models, tmp_path):
    from safetensors.torch import save_file

    components = get_dummy_components(tiny_models)
    ours = StableDiffusionXLOnePoseTransPipeline(**components)  # shared components: one LoRA for both
    parent = StableDiffusionXLControlNetPipeline(**parent_components(components))
    for pipe in (ours, parent):
        pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    lora = {}
    for key, weight in ours.unet.state_dict().items():
        if key.endswith(("attn1.to_q.weight", "attn2.to_k.weight")):
            base = f"unet.{key.removesuffix('.weight')}"
            lora[f"{base}.lora.down.weight"] = torch.randn(4, weight.shape[1], generator=generator) * 0.3
            lora[f"{base}.lora.up.weight"] = torch.randn(weight.shape[0], 4, generator=generator) * 0.3
    save_file(lora, tmp_path / "lora.safetensors")
    ours.load_lora_weights(tmp_path, weight_name="lora.safetensors", adapter_name="style")
    scaled = dict(cross_attention_kwargs={"scale": 0.3})
    assert_same(ours(**get_dummy_inputs(**scaled)), parent(**get_dummy_inputs(**scaled)))
    assert np.abs(images(ours(**get_dummy_inputs(**scaled))) - images(ours(**get_dummy_inputs()))).max() > 1e-3
