"""The two profiles as one object each: ``reference`` reproduces the published code's outputs,
quirks included; ``default`` fixes its bugs.

A :class:`Profile` is a frozen set of named policies. The session builds it once from
``--profile`` (:func:`profile_named`) and every stage reads the policy it needs
(``session.profile.paste_matte``), so no code compares profile names. :data:`ROWS` says, for each
policy, what each profile does and why: the README's *Profiles* table is generated from it
(:func:`markdown_table`), and a test checks that every field is described and that the two
profiles differ in each described row, so the object and the table cannot drift apart.

Nothing here imports torch: ``--help`` reads these names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    """What one profile does wherever the published code and this project's fixes differ.
    The comment after each field names its reference value first."""

    name: str
    finetune_pooled: str
    """"unprojected" (text_encoder_2's pooler output) or "projected" (what the generator uses)."""
    pose_canvas: str
    """"square" (pose maps stretched to 1024x1024) or "aspect" (the target's aspect ratio)."""
    finetune_crops: str
    """"torchvision" (the published Resize/RandomCrop from torch's generator) or "pil" (rounded resize, Python's generator)."""
    finetune_vae_dtype: str
    """"bf16 rounded" (weights loaded in bf16, then cast to the training precision, in which it encodes) or "fp32"."""
    caption_text: str
    """What a captions line 'index/name/text' gives: "to the next slash" (``split('/')[2]``, as published) or "rest of the line"."""
    fast_step: bool
    """The LoRA step with weights in the UNet's precision, fp32 masters and a fused AdamW, captured
    as a CUDA graph on a GPU (bf16 there where the GPU has it)."""
    batch_transparent_views: bool
    """The transparent decoder's 8 views decoded together by shape (False: one at a time)."""
    fuse_lora: bool
    """The subject LoRA merged into the UNet for the denoising loop (False: adapters run unfused)."""
    deepfashion_pose: str
    """"cfld" (CFLD's drawing on a stretched 256x256 canvas) or "openpose" (the standard skeleton at the generation size)."""
    finetune_time_ids: str
    """"photo" ((W, H, 0, 0, W, H) of the full photo) or "crop" ((H, W, top, left, 512, 512))."""
    decoder_latent: str
    """"scaled" (the sampled latent, still times the VAE scaling factor) or "unscaled"."""
    controlnet_text_tokens: int
    """Text tokens the ControlNet's cross-attention reads: 57 (published) or all 77."""
    face_position: str
    """"fixed" (text position 4 in both halves of CFG) or "word" (the caption's word "face")."""
    face_key: str
    """Projection of the face branch's key: "value" (the published slip) or "key"."""
    face_projection: str
    """"one batch" (the Resampler projects the unconditional zeros and the face together, as published) or "row by row"."""
    clip_resize: str
    """The image prompt's CLIP preprocessing: "PIL" (transformers 4.37's, as published) or "torchvision" (transformers 5's default)."""
    face_choice: str
    """"first" (the first face InsightFace returns) or "largest"."""
    identity_image: str
    """"stretch" (the person on black stretched to 1024x1024) or "pad" (padded to a square)."""
    require_person_mask: bool
    """A dataset source without ``images_rgba`` fails (False: the whole photo, with a note)."""
    batch_poses: bool
    """Target poses of one size share a pipeline call (False: one target per call, as published)."""
    transparent_rounding: str
    """"truncate" (8-bit RGB in, output truncated, as published) or "round" (float RGB in, output rounded)."""
    vae_upcast: str
    """How an fp16 VAE that asks for upcasting (SDXL's) decodes: "diffusers 0.28" (``post_quant_conv``,
    ``decoder.conv_in`` and ``decoder.mid_block`` kept in fp16) or "whole VAE" (all of it in fp32)."""
    refine_vae_dtype: str
    """The refining stage's VAE: "bf16" (a bf16 copy encodes and decodes, as published) or "generator's"
    (the generator's VAE, upcast to fp32 where it asks for it)."""
    segment_size: str
    """"full size" (the photo as given, as published) or "at most 2048 px" (larger photos on a downscaled copy)."""
    person_choice: str
    """"most confident" or "largest" detection when several people are found."""
    lama_export: str
    """"published" (the 1024x1024 export, its output kept) or "any" (any fixed size, mapped back)."""
    diffusion_inpaint: str
    """"published" (strength 0.6, 1024x1024, seed on the GPU) or "fitted" (1.0, the photo's size, seed on the CPU)."""
    paste_matte: str
    """"mask" (the re-segmented SAM mask, hard edge) or "alpha" (the LayerDiffuse alpha, feathered mask otherwise)."""
    resegment_results: bool
    """Steps 6, 7 and 10 run SAM on the results (False: their LayerDiffuse alpha is the mask)."""
    refine_ip_scale: str
    """"everywhere" (1.0 in all cross-attention layers) or "style block" (1.0 at up_blocks.0.attentions.1 only)."""
    refine_input: str
    """"published" (``reposed_rgba`` stretched to 1024x1024, unprojected pooled embedding) or "own frame"."""
    paste_background: str
    """"stretch" (to the result's size) or "cover" (scaled to cover the frame, centre-cropped)."""
    imagpose_snr_weight: str
    """IMAGPose's v-prediction loss weight: "min(SNR+1, gamma)/(SNR+1)" (published) or "min(SNR, gamma)/(SNR+1)" (Min-SNR's)."""
    imagpose_draw: str
    """"with repetition" (4 photos drawn with replacement, each tile given with probability 1/2) or "distinct"."""
    imagpose_drop: str
    """"encoder inputs" (zeroed image-encoder pixels and tile latents; phase 1: the image only, for 10 % of
    batches) or "tokens" (the sampler's null condition, zero tokens, 5/5/5 % of samples in every phase)."""
    imagpose_conv_in: str
    """"fresh" (a new 9-channel ``conv_in`` weight, SD1.5's bias) or "stock + zero channels"."""
    imagpose_cva_init: str
    """The registry model the CVA modules start from: "animateanyone-motion" or "animatediff-motion-v2"."""
    imagpose_final_alpha: str
    """DDIM's last step: to alpha 1 ("one", ``set_alpha_to_one``) or to the first timestep's ("first")."""
    imagpose_encoder_input: str
    """The image encoder's 224x224 input: "published" (training centre-crops, sampling squashes) or "padded"."""
    imagpose_flc_reference: str
    """IMAGPose training's FLC views: "published" (one given photo, unflipped; its VAE tokens from its own
    encoding in [0, 1]) or "given tiles" (every given tile, from the masked canvas's latent, as sampling)."""
    imagpose_vae_latents: str
    """IMAGPose training's condition latents (masked canvas, FLC reference): "sampled" from the VAE's posterior or its "mean"."""

    def replace(self, **changes) -> "Profile":
        """A variant of this profile (benchmarks compare, say, the published and the fast LoRA step)."""
        return dataclasses.replace(self, **changes)


REFERENCE = Profile(
    name="reference",
    finetune_pooled="unprojected",
    pose_canvas="square",
    finetune_crops="torchvision",
    finetune_vae_dtype="bf16 rounded",
    caption_text="to the next slash",
    fast_step=False,
    batch_transparent_views=False,
    fuse_lora=False,
    deepfashion_pose="cfld",
    finetune_time_ids="photo",
    decoder_latent="scaled",
    controlnet_text_tokens=57,
    face_position="fixed",
    face_key="value",
    face_projection="one batch",
    clip_resize="PIL",
    face_choice="first",
    identity_image="stretch",
    require_person_mask=True,
    batch_poses=False,
    transparent_rounding="truncate",
    vae_upcast="diffusers 0.28",
    refine_vae_dtype="bf16",
    segment_size="full size",
    person_choice="most confident",
    lama_export="published",
    diffusion_inpaint="published",
    paste_matte="mask",
    resegment_results=True,
    refine_ip_scale="everywhere",
    refine_input="published",
    paste_background="stretch",
    imagpose_snr_weight="min(SNR+1, gamma)/(SNR+1)",
    imagpose_draw="with repetition",
    imagpose_drop="encoder inputs",
    imagpose_conv_in="fresh",
    imagpose_cva_init="animateanyone-motion",
    imagpose_final_alpha="one",
    imagpose_encoder_input="published",
    imagpose_flc_reference="published",
    imagpose_vae_latents="sampled",
)

DEFAULT = Profile(
    name="default",
    finetune_pooled="projected",
    pose_canvas="aspect",
    finetune_crops="pil",
    finetune_vae_dtype="fp32",
    caption_text="rest of the line",
    fast_step=True,
    batch_transparent_views=True,
    fuse_lora=True,
    deepfashion_pose="openpose",
    finetune_time_ids="crop",
    decoder_latent="unscaled",
    controlnet_text_tokens=77,
    face_position="word",
    face_key="key",
    face_projection="row by row",
    clip_resize="torchvision",
    face_choice="largest",
    identity_image="pad",
    require_person_mask=False,
    batch_poses=True,
    transparent_rounding="round",
    vae_upcast="whole VAE",
    refine_vae_dtype="generator's",
    segment_size="at most 2048 px",
    person_choice="largest",
    lama_export="any",
    diffusion_inpaint="fitted",
    paste_matte="alpha",
    resegment_results=False,
    refine_ip_scale="style block",
    refine_input="own frame",
    paste_background="cover",
    imagpose_snr_weight="min(SNR, gamma)/(SNR+1)",
    imagpose_draw="distinct",
    imagpose_drop="tokens",
    imagpose_conv_in="stock + zero channels",
    imagpose_cva_init="animatediff-motion-v2",
    imagpose_final_alpha="first",
    imagpose_encoder_input="padded",
    imagpose_flc_reference="given tiles",
    imagpose_vae_latents="mean",
)

PROFILES = {profile.name: profile for profile in (DEFAULT, REFERENCE)}
"""By name, in the order ``--profile`` lists them."""


def profile_named(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose from {', '.join(PROFILES)}") from None


@dataclass(frozen=True)
class Row:
    """One line of the README's table: the fields it describes, where it acts, and what each
    profile does there, with the reason for the default."""

    fields: tuple[str, ...]
    stage: str
    reference: str
    default: str
    why: str


ROWS = (
    Row(
        ('finetune_pooled',),
        'finetune: pooled text embedding',
        "text_encoder_2's unprojected pooler output (it was loaded as a plain `CLIPTextModel`)",
        'the projected embedding',
        'the generator conditions on the projected one; training on another input than inference sees is a silent mismatch',
    ),
    Row(
        ('pose_canvas',),
        'pose maps from photos (WPose, demo), OpenPose JSON and pose maps',
        'stretched to 1024x1024 (PIL bicubic): the active published WPose line passed a numpy map that diffusers 0.28 rejects, so the published results come from the commented-out path `Image.open(pose).resize((1024, 1024))`',
        "the map at the generation size with the target's aspect ratio (e.g. 1024x1344 for 3:4); each profile caches its own `poses/<target>[.reference].png`",
        'the square stretch distorts the person',
    ),
    Row(
        ('finetune_crops', 'finetune_vae_dtype'),
        'finetune: crops and VAE precision',
        "torchvision's `Resize(512)` (long side truncated: 751 for a 750x1101 photo) and `RandomCrop(512)` drawing from torch's generator; the VAE, loaded in bf16 and cast to fp16 (its weights carry bf16 rounding), encodes in fp16",
        "PIL resize with rounding (752) and crops from Python's generator; the VAE encodes in fp32",
        'seed 0 then gives the published crops; the SDXL VAE overflows in fp16',
    ),
    Row(
        ('caption_text',),
        'captions files (`index/name/text`)',
        "the text up to its next `/` (`line.split('/')[2]`): one DeepFashion caption, \"a white/grey geometric pattern\", loses its end",
        'the whole rest of the line',
        'a slash inside a caption is text',
    ),
    Row(
        ('fast_step',),
        'finetune: the training step',
        "fp32 LoRA weights under autocast (a cast of each of the 1,120 LoRA matrices at every call), torch's default AdamW, a VAE encode and the loss read every step; fp16 on a GPU",
        "LoRA weights in the UNet's precision with fp32 masters in a fused AdamW, no autocast, all crops VAE-encoded before the loop in calls of 8, losses read at the end; bf16 on a GPU that has it, the step captured once per case as a CUDA graph and replayed (`--no-cuda-graph`: eager)",
        '2.3x fewer GPU operations per step (25,007 -> 10,902 on the full-size UNet), and none launched from Python once captured (the eager step was launch-bound: 501 ms on an H200 for 14 ms of arithmetic); the same LoRA to 1e-5 in fp32, learned weights under 5 % apart in bf16',
    ),
    Row(
        ('batch_transparent_views',),
        "repose, refine: the transparent decoder's 8 flip/rotation views",
        'decoded one at a time',
        'decoded together by shape: one call for a square image, two otherwise',
        'fewer, larger calls; the same RGBA to 1e-5',
    ),
    Row(
        ('fuse_lora',),
        'repose, refine: the subject LoRA',
        'the adapters run unfused at every step',
        'merged with its block scales into the UNet for the loop; the exact weights restored after the identity',
        "the adapters' extra matrix products leave every step; images agree to 1e-3",
    ),
    Row(
        ('deepfashion_pose',),
        'pose maps from DeepFashion keypoints',
        "CFLD's drawing on a 256x256 canvas from the 256x176 frame (x stretched by 256/176), stretched to 1024x1024; out-of-frame joints drawn where they fall",
        "the standard OpenPose skeleton drawn at the generation size with the frame's aspect ratio (e.g. 1024x1472); out-of-frame joints skipped",
        'the square stretch distorts the person; a joint outside the frame has no right place to be drawn',
    ),
    Row(
        ('finetune_time_ids',),
        'finetune: SDXL time ids',
        '(W, H, 0, 0, W, H) of the full-size photo',
        '(H, W, crop top, crop left, 512, 512)',
        "SDXL expects (height, width) order, and the trained image is a 512 crop at a known offset (diffusers' SDXL training convention)",
    ),
    Row(
        ('decoder_latent',),
        'repose: transparent decoder input',
        'the final latent as sampled (still multiplied by the VAE scaling factor 0.13025)',
        'the latent divided by the scaling factor',
        "LayerDiffuse's decoder was trained on unscaled VAE latents, and the refining stage of the same code divides",
    ),
    Row(
        ('controlnet_text_tokens',),
        'repose: ControlNet text',
        'text tokens 0..56 (the pipeline cut to 77, then the ControlNet processor dropped 20 more)',
        'all 77 text tokens; never image or face tokens',
        "the cut removes the caption's tail for no reason",
    ),
    Row(
        ('face_position',),
        'repose: face injection position',
        'text position 4 in both halves of CFG, whatever the words (the negative prompt\'s "bad")',
        'the position of the word "face" found in the tokenized caption; a caption without it skips the face with a warning; the negative prompt is left alone unless it says "face"',
        'any caption not starting "A man/woman with face," put the face on the wrong word',
    ),
    Row(
        ('face_key',),
        'repose: face key projection',
        '`to_face_v_ip` (only matters if the face branch scale is raised from 0)',
        '`to_face_k_ip`',
        'the published key used the value projection',
    ),
    Row(
        ('face_projection',),
        "repose: the face Resampler's input",
        'the unconditional zeros and the face embedding in one batch of 2',
        'each distinct row projected alone',
        "a row's tokens then do not depend on what shares its batch (the same bits for one target or four)",
    ),
    Row(
        ('clip_resize',),
        "repose: the image prompt's CLIP preprocessing",
        "PIL's bicubic resize, as transformers 4.37 did (`CLIPImageProcessorPil`)",
        "transformers 5's default processor, which resizes with torchvision",
        'the two differ by up to one 8-bit level; the default follows the library, the reference the published inputs',
    ),
    Row(
        ('face_choice',),
        'repose: which face',
        'the first InsightFace returns',
        'the largest',
        "a bystander's face must not become the subject's",
    ),
    Row(
        ('identity_image',),
        'repose: what the image prompt (CLIP) and the face detector read',
        '`images_rgba/<src>.png` resized to 1024x1024 by Pillow, which resizes RGBA premultiplied, so the background comes back black: the person on black, stretched to a square',
        'the same person on black at its own aspect ratio, padded to a square with black',
        "stretching distorts the identity; CLIP's centre crop of a portrait would cut about 16 % off head and feet. Both profiles keep the published person-on-black input (the LoRA still trains on the full photo)",
    ),
    Row(
        ('require_person_mask',),
        'generate: a source without `images_rgba`',
        'the case fails with one line (run `segment --mode dataset` first)',
        'the whole photo, with a note in the log',
        "the paper's numbers need the published input; elsewhere a run should go on",
    ),
    Row(
        ('batch_poses',),
        'repose: targets per pipeline call',
        'one, as published',
        '`--batch-size` poses of one size',
        'batching changes the kernels, hence the last bits of every image',
    ),
    Row(
        ('transparent_rounding',),
        'repose: 8-bit quantisation around the transparent decoder',
        "its RGB input is the pipeline's 8-bit picture; its output is truncated (`astype(uint8)`)",
        'float RGB in; output rounded',
        'rounding is the unbiased conversion; truncation darkens every channel by half a level on average',
    ),
    Row(
        ('vae_upcast',),
        "repose: VAE decode on a GPU (an fp16 VAE that asks for upcasting, as SDXL's does)",
        "as diffusers 0.28's `upcast_vae`: `post_quant_conv`, `decoder.conv_in` and `decoder.mid_block` stay in fp16 and read the fp16 latents, the up blocks run in fp32",
        'the whole VAE in fp32, as diffusers 0.42 does',
        "fp16 in the decoder's first layers rounds what every later layer reads; diffusers itself dropped the partial upcast",
    ),
    Row(
        ('refine_vae_dtype',),
        'refine: VAE precision',
        'a bf16 copy of the VAE (the published stage loaded it in bf16) encodes the transparent input and decodes the result; the sampled latents are cast to bf16 before unscaling',
        "the generator's VAE, in fp32 on a GPU (the fp16 VAE asks for upcasting)",
        'bf16 keeps 8 bits of mantissa where fp32 keeps 24, and no second VAE is held in memory; fp16 would overflow',
    ),
    Row(
        ('segment_size',),
        'segment: photos larger than 2048 px',
        'segmented at full size',
        'segmented on a copy whose longer side is 2048 px, the mask mapped back to full size',
        'both models resize their input to about 1k pixels anyway; full-size intermediates of a 6000-px photo only cost memory',
    ),
    Row(
        ('person_choice',),
        'segment: several people',
        'the most confident detection (the published code took detection 0)',
        'the largest detection',
        'the subject of a photo is usually its largest person; a confident bystander must not be cut out',
    ),
    Row(
        ('lama_export',),
        'inpaint (LaMa): export and output size',
        'the published 1024x1024 export (`lama_fp32_1024.onnx`, required: another size is refused with one line); its 1024x1024 output kept',
        'any fixed-size export; the output resized back to the source size, source pixels kept outside the mask',
        'backgrounds must line up with non-square sources and results; LaMa has nothing to change outside the hole. Both profiles resize photo and mask bicubic and take every non-zero pixel of the resized mask as hole, as published',
    ),
    Row(
        ('diffusion_inpaint',),
        'inpaint (SDXL): strength, size, generator',
        "0.6; no size given, so diffusers' default 1024x1024 output, kept; seed 0 on the GPU when there is one",
        "1.0; the photo's own size (rounded down to multiples of 8, mapped back); seed 0 on the CPU",
        'at 0.6 a ghost of the person stays in the hole; backgrounds must line up with the source',
    ),
    Row(
        ('paste_matte',),
        'paste: matte',
        'the SAM mask of the re-segmented result (the LayerDiffuse alpha was dropped on reading), hard edge',
        'the LayerDiffuse alpha when the result has one, else the mask feathered inwards',
        "the generator's own matte keeps hair and soft edges; a hard cut leaves jagged outlines",
    ),
    Row(
        ('resegment_results',),
        'segment `rgba`/`rgb` modes on generated results (steps 6, 7, 10)',
        'SAM on the result read without its alpha',
        'the LayerDiffuse alpha as the mask when the file has one (SAM otherwise)',
        "the published code dropped the generator's own matte on reading and segmented again",
    ),
    Row(
        ('refine_ip_scale',),
        'refine: image prompt scale',
        '1.0 in all 70 cross-attention layers (the published `set_scale` wrote an attribute the processor never read)',
        '1.0 at `up_blocks.0.attentions.1` only, as the code meant',
        'the global image prompt overrides the caption everywhere',
    ),
    Row(
        ('refine_input',),
        'refine: frame and input',
        '`reposed_rgba` (SAM alpha) stretched to 1024x1024; pooled text embedding unprojected',
        '`reposed_result` (LayerDiffuse RGBA) in its own frame; the projected pooled embedding',
        'stretching distorts non-square results; the generator conditions on the projected embedding',
    ),
    Row(
        ('paste_background',),
        'paste: background size',
        "stretched to the result's size (the published code stopped with a size error on WPose)",
        "scaled to cover the result's frame and centre-cropped",
        'stretching distorts the background of non-square results',
    ),
    Row(
        ('imagpose_snr_weight',),
        'imagpose train: loss weight of a timestep (v-prediction, min-SNR gamma 5)',
        'min(SNR + 1, gamma) / (SNR + 1), as the published scripts compute it (one added to the SNR before the min): weight 1 at t = 999',
        "min(SNR, gamma) / (SNR + 1), Min-SNR's weight for v-prediction (Hang et al., 2023) and diffusers' since 2023: weight 0 at t = 999",
        'the two differ on 861 of 1,000 timesteps; the published one gives the noisier half of the schedule 55 % of the total weight, the paper it cites 11 %',
    ),
    Row(
        ('imagpose_draw',),
        'imagpose train: the four photos and the masked tiles of a sample',
        "4 photos drawn with replacement from the identity's (not all four the same; identities of 2 photos or more), each tile given with probability 1/2 (not all, not none: 1, 2 or 3 masked in proportions 4:6:4)",
        '4 distinct photos (identities of 4 photos or more), 1, 2 or 3 masked tiles with equal probability',
        'a repeated photo can be both a given and a masked tile, so the model may learn to copy; the published draw does make the T1/T2 layouts of evaluation (one pose or one source repeated) common in training',
    ),
    Row(
        ('imagpose_drop',),
        'imagpose train: the condition dropout for guidance',
        "the encoders' inputs zeroed: phase 1 the image encoder's pixels of the whole batch with probability 0.1; phases 2-3 per sample 5 % pixels, 5 % tile latents, 5 % both (the sampler's null condition is zero tokens, which training never shows)",
        "the tokens zeroed, the sampler's null condition, 5 % image, 5 % latent, 5 % both per sample in every phase",
        'guidance contrasts the condition with its null; training should show the null the sampler uses',
    ),
    Row(
        ('imagpose_conv_in',),
        'imagpose init: the 9-channel `conv_in`',
        "a fresh weight (PyTorch's default initialisation, as `ignore_mismatched_sizes=True` leaves it), SD1.5's bias",
        "SD1.5's weight on the 4 latent channels, zero on the 5 new ones, SD1.5's bias",
        'the widened UNet then starts as the stock one, instead of from noise in its first layer',
    ),
    Row(
        ('imagpose_cva_init',),
        'imagpose init: where the CVA modules start',
        "Moore-AnimateAnyone's trained `motion_module.pth` (registry `animateanyone-motion`)",
        "AnimateDiff v2's `mm_sd_v15_v2.ckpt` (registry `animatediff-motion-v2`)",
        "the paper names AnimateDiff's motion module; AnimateAnyone's is the same modules after dance-video training, which the published configs pointed at",
    ),
    Row(
        ('imagpose_final_alpha',),
        "imagpose init: DDIM's last step",
        "`set_alpha_to_one=True` (diffusers' default, which the published scheduler kept): the last step lands on alpha 1",
        "`set_alpha_to_one=False`, SD1.5's scheduler config: the last step lands on the first timestep's alpha",
        "with zero-terminal-SNR trailing timesteps the difference is the last step's target only; SD1.5's config is what its UNet was trained beside",
    ),
    Row(
        ('imagpose_encoder_input',),
        "imagpose: the image encoder's 224x224 input",
        "training: CLIP's processor (shorter side to 224, centre crop: the head and feet of a 176x256 photo are cut), on the photo before the flip; sampling: the photo squashed to 224x224; CLIP's mean and std",
        'the photo padded to a square with black, then resized to 224x224, in training and sampling alike; the tile as flipped',
        'the crop cuts the person and the squash distorts them, and training and sampling then see different inputs',
    ),
    Row(
        ('imagpose_flc_reference',),
        'imagpose train: the FLC views (image-encoder and VAE tokens of the given photos)',
        "one random given tile's photo before the flip; its VAE tokens from its own encoding in [0, 1]",
        "every given tile, one token set each with its view embedding; the VAE tokens are the tile's in the masked canvas's latent, in [-1, 1]",
        'sampling encodes the reference in [-1, 1] and takes several views in one pass; training should show it the same',
    ),
    Row(
        ('imagpose_vae_latents',),
        'imagpose train: the latents of the masked canvas and the FLC reference',
        "drawn from the VAE's posterior",
        "the posterior's mean",
        'sampling uses the mean; a draw adds noise to conditions that should be exact',
    ),
)


def markdown_table() -> str:
    """The README's *Profiles* table."""
    lines = ["| stage | `reference` (as published) | `default` | why |", "|---|---|---|---|"]
    lines += [f"| {row.stage} | {row.reference} | {row.default} | {row.why} |" for row in ROWS]
    return "\n".join(lines) + "\n"
