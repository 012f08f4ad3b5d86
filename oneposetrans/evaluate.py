"""Evaluation in the field's own protocol (the metrics code the pose-transfer papers share, PATN to CFLD; README *Evaluation*), batched on one device.

* SSIM, both community variants of scikit-image's ``structural_similarity`` as GFLA/CFLD call it:
  "ssim" on [0,1] with a 51x51 uniform window, and "ssim_256" on [0,255] with a Gaussian window
  (sigma 1.5, ``use_sample_covariance=False``) and the per-image data range ``max - min`` of the
  generated image; "ssim_pcdms" is "ssim_256" with sigma 1.2, as PIDM and PCDMs (and so IMAGPose)
  call it. Computed here with valid-region convolutions, equal to scikit-image's values.
* PSNR on [0,1], data range 1. LPIPS with the AlexNet backbone (the lpips package) on [-1,1].
  "lpips_pcdms" is LPIPS as PCDMs' ``metrics.py`` (and so IMAGPose's numbers) computes it: both
  images resized with OpenCV's cubic filter, given in [0,1] to a network that expects [-1,1],
  and the mean taken over whole batches of 64 only (the last partial batch dropped).
* FID, community protocol: torchvision's ImageNet Inception-v3 (bilinear resize to 299, CFLD's
  input transform, 2048-d pool features), real set = the training images, every image kept (the
  GFLA scripts dropped the last partial batch). Standard protocol: the TF-ported Inception of
  pytorch-fid / torch-fidelity on the same sets. Frechet distance with scipy's ``sqrtm``.
* Foreground-masked SSIM/PSNR/LPIPS: both images with the background set to black by the target's
  person mask (``images_rgba`` alpha of the target), the "M-" metrics of the field.
* Face identity: ArcFace (antelopev2) cosine of the result's face to the source's and the target's.

Every backbone is a registry model read from ``models/``; nothing is downloaded at run time.
"""

from __future__ import annotations

import base64
import html
import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from oneposetrans import registry
from oneposetrans.errors import BadInputError
from oneposetrans.face import FaceEmbedder
from oneposetrans.image_io import load_image
from oneposetrans.profiles import PROFILES
from oneposetrans.report import render_contact_sheet
from oneposetrans.results import pose_map_name, split_pair_name, write_json_atomic, write_text_atomic
from oneposetrans.runtime import quiet_libraries, resolve_device
from oneposetrans.settings import ALL_METRICS, PAIR_METRICS, SET_METRICS

SIZES = {"256x176": (176, 256), "512x352": (352, 512)}
"""The field's DeepFashion evaluation sizes (height x width) -> PIL (width, height)."""
NATIVE = "native"
CPU_SSIM_CHUNK = 4
LOWER_IS_BETTER = {"lpips", "lpips_pcdms", "masked_lpips", "fid", "fid_standard"}
PCDMS_LPIPS_BATCH = 64
"""PCDMs' LPIPS batch: its mean covers ``len // 64 * 64`` pairs (all of them when fewer than 64)."""


# --- SSIM and PSNR --------------------------------------------------------------------------------


SSIM_SIGMA = {"ssim": None, "ssim_256": 1.5, "ssim_pcdms": 1.2}
"""The Gaussian window of each SSIM variant (None: the 51x51 uniform window)."""


def ssim(generated: torch.Tensor, target: torch.Tensor, variant: str = "ssim", backend: str = "auto") -> torch.Tensor:
    """Per-image SSIM of N x 3 x H x W float images in [0,1], as scikit-image computes it.

    ``variant="ssim"``: uniform 51x51 window, data range 1, sample covariance (skimage default).
    ``variant="ssim_256"``: images x255, Gaussian window (sigma 1.5), population covariance, data
    range = generated.max() - generated.min() per image (GFLA's call); ``"ssim_pcdms"`` the same
    with sigma 1.2 (PIDM's and PCDMs' call).
    ``backend``: "scipy" filters the whole batch with scipy.ndimage (fastest on a CPU), "torch"
    with tensor operations on the images' device (a GPU); "auto" picks by device.
    """
    if variant not in SSIM_SIGMA:
        raise ValueError(f"unknown SSIM variant {variant!r}")
    if backend == "auto":
        backend = "scipy" if generated.device.type == "cpu" else "torch"
    if backend == "scipy" and len(generated) > CPU_SSIM_CHUNK:
        # On a CPU the filters are memory-bound: a few images at a time stay in cache.
        return torch.cat([
            ssim(generated[i : i + CPU_SSIM_CHUNK], target[i : i + CPU_SSIM_CHUNK], variant, backend)
            for i in range(0, len(generated), CPU_SSIM_CHUNK)
        ])
    x, y = generated.double(), target.double()
    if variant != "ssim":
        x, y = x * 255.0, y * 255.0
        data_range = x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3))
    else:
        data_range = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
    taps = 51 if variant == "ssim" else 2 * int(3.5 * SSIM_SIGMA[variant] + 0.5) + 1
    cov_norm = taps**2 / (taps**2 - 1.0) if variant == "ssim" else 1.0
    blur = _scipy_blur if backend == "scipy" else _torch_blur
    # The five local statistics are filtered in one call, and only the valid region is kept,
    # which is scikit-image's filter followed by its border crop.
    stacked = torch.stack([x, y, x * x, y * y, x * y])
    mean_x, mean_y, xx, yy, xy = blur(stacked, variant, taps).to(x.device)
    var_x = cov_norm * (xx - mean_x * mean_x)
    var_y = cov_norm * (yy - mean_y * mean_y)
    cov = cov_norm * (xy - mean_x * mean_y)
    c1 = ((0.01 * data_range) ** 2)[:, None, None, None]
    c2 = ((0.03 * data_range) ** 2)[:, None, None, None]
    index = ((2 * mean_x * mean_y + c1) * (2 * cov + c2)) / ((mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2))
    return index.mean(dim=(1, 2, 3)).float().cpu()


def _valid(filtered: np.ndarray | torch.Tensor, taps: int):
    pad = (taps - 1) // 2
    return filtered[..., pad : filtered.shape[-2] - pad, pad : filtered.shape[-1] - pad]


def _scipy_blur(stacked: torch.Tensor, variant: str, taps: int) -> torch.Tensor:
    from scipy import ndimage

    array = stacked.cpu().numpy()
    if variant == "ssim":
        filtered = ndimage.uniform_filter(array, size=(1, 1, 1, taps, taps))
    else:
        sigma = SSIM_SIGMA[variant]
        filtered = ndimage.gaussian_filter(array, sigma=(0, 0, 0, sigma, sigma), truncate=3.5)
    return torch.from_numpy(np.ascontiguousarray(_valid(filtered, taps)))


def _torch_blur(stacked: torch.Tensor, variant: str, taps: int) -> torch.Tensor:
    if variant == "ssim":
        window = torch.full((taps,), 1.0 / taps, dtype=torch.float64, device=stacked.device)
    else:
        offsets = torch.arange(taps, dtype=torch.float64, device=stacked.device) - (taps - 1) // 2
        window = torch.exp(-(offsets**2) / (2 * SSIM_SIGMA[variant] ** 2))
        window = window / window.sum()
    # Separable and valid: each axis is a dot product over a sliding view.
    rows = stacked.unfold(3, taps, 1) @ window
    return rows.unfold(4, taps, 1) @ window


def psnr(generated: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR on [0,1] images with data range 1 (scikit-image's ``peak_signal_noise_ratio``)."""
    mse = ((generated.double() - target.double()) ** 2).mean(dim=(1, 2, 3))
    return (10.0 * torch.log10(1.0 / mse.clamp_min(1e-20))).float()


# --- Frechet distance -----------------------------------------------------------------------------


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 sqrt(S_a S_b)) (Heusel et al., 2017).

    With fewer images than feature dimensions (2048 for Inception) the covariances have low rank,
    and Tr sqrt(S_a S_b) is exactly the sum of the singular values of X_a X_b^T (the centred
    features) over sqrt((n_a - 1)(n_b - 1)): the nonzero eigenvalues of S_a S_b are those of
    (X_a X_b^T)(X_a X_b^T)^T up to that factor. That costs milliseconds where ``scipy.linalg.sqrtm``
    of the 2048x2048 product took about 30 s and warned that it is singular. Otherwise the usual
    ``sqrtm`` route, with its 1e-6 diagonal fallback, as pytorch-fid.
    """
    mu_a, mu_b = features_a.mean(axis=0), features_b.mean(axis=0)
    centred_a, centred_b = features_a - mu_a, features_b - mu_b
    scale_a, scale_b = len(features_a) - 1, len(features_b) - 1
    if min(len(features_a), len(features_b)) <= features_a.shape[1]:
        singular = np.linalg.svd(centred_a @ centred_b.T, compute_uv=False)
        trace_root = singular.sum() / np.sqrt(scale_a * scale_b)
        traces = (centred_a**2).sum() / scale_a + (centred_b**2).sum() / scale_b
        return float(((mu_a - mu_b) ** 2).sum() + traces - 2.0 * trace_root)
    from scipy import linalg

    sigma_a, sigma_b = centred_a.T @ centred_a / scale_a, centred_b.T @ centred_b / scale_b
    root, _ = linalg.sqrtm(sigma_a @ sigma_b, disp=False)
    if not np.isfinite(root).all():
        offset = np.eye(sigma_a.shape[0]) * 1e-6
        root = linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * np.trace(root.real))


# --- backbones ------------------------------------------------------------------------------------


def _torch_weights(path: Path) -> dict:
    """A state dict read with ``weights_only=True``: tensors only, never arbitrary pickled code."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


class Lpips:
    """LPIPS (AlexNet, v0.1 linear layers shipped with the lpips package) with the AlexNet
    ImageNet features read from the registry's local file."""

    def __init__(self, models_dir: str | os.PathLike, device: torch.device):
        import lpips

        folder = registry.require("lpips-alex", models_dir)
        with warnings.catch_warnings():
            # lpips passes torchvision's deprecated `pretrained=` flag; the backbone is loaded below.
            warnings.simplefilter("ignore", UserWarning)
            self.model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
        features = {k[len("features."):]: v for k, v in _torch_weights(folder / "alexnet-owt-7be5be79.pth").items() if k.startswith("features.")}
        for index in range(1, self.model.net.N_slices + 1):
            part = getattr(self.model.net, f"slice{index}")
            part.load_state_dict({name: features[name] for name in part.state_dict()})
        self.model.to(device).eval()

    @torch.no_grad()
    def __call__(self, generated: torch.Tensor, target: torch.Tensor, as_pcdms: bool = False) -> torch.Tensor:
        """Per-pair distances of [0, 1] images; ``as_pcdms`` passes them unscaled, as PCDMs did."""
        if as_pcdms:
            return self.model(generated, target).flatten()
        return self.model(generated * 2 - 1, target * 2 - 1).flatten()


def pcdms_batches(per_pair: dict[str, float]) -> list[float]:
    """The pairs' values that PCDMs' LPIPS mean covers: whole batches of 64 (every pair when
    there are fewer), in name order; PCDMs' own order was its folder listing's, which no file
    system fixes, so which of the last pairs it dropped cannot be reproduced exactly."""
    values = [per_pair[name] for name in sorted(per_pair)]
    if len(values) <= PCDMS_LPIPS_BATCH:
        return values
    return values[: len(values) // PCDMS_LPIPS_BATCH * PCDMS_LPIPS_BATCH]


def pcdms_pixels(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """(3, H, W) in [0, 1] as PCDMs' metric scripts read an image: float32 RGB resized to
    ``size`` (width, height) with OpenCV's bicubic (``INTER_CUBIC``; a no-op at that size)."""
    import cv2

    pixels = np.asarray(load_image(path, "RGB"), np.float32)
    if (pixels.shape[1], pixels.shape[0]) != tuple(size):
        pixels = cv2.resize(pixels, tuple(size), interpolation=cv2.INTER_CUBIC)
    return torch.from_numpy(pixels / 255.0).permute(2, 0, 1)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def community_inception_input(images: torch.Tensor) -> torch.Tensor:
    """What the pose-transfer FID feeds the Inception network (CFLD's ``forward_inception``,
    copied by MCLD and others): [0, 1] images resized bilinearly to 299x299, then, per channel,
    ``x * (std / 0.5) + (mean - 0.5) / 0.5``. That is torchvision's ``transform_input`` (meant
    for ImageNet-normalised input) applied to raw [0, 1] pixels: not a textbook normalisation,
    but the one behind the field's FID tables, so it is kept exactly."""
    x = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
    scale = torch.tensor([s / 0.5 for s in IMAGENET_STD], device=x.device, dtype=x.dtype)[:, None, None]
    shift = torch.tensor([(m - 0.5) / 0.5 for m in IMAGENET_MEAN], device=x.device, dtype=x.dtype)[:, None, None]
    return x * scale + shift


class InceptionFeatures:
    """2048-d pool features for FID, community (torchvision ImageNet) or standard (TF-ported)."""

    def __init__(self, models_dir: str | os.PathLike, device: torch.device, protocol: str = "community"):
        self.device, self.protocol = device, protocol
        if protocol == "community":
            from torchvision.models import inception_v3

            folder = registry.require("fid-inception", models_dir)
            model = inception_v3(weights=None, aux_logits=True, init_weights=False)
            model.load_state_dict({k: v.float() for k, v in _torch_weights(folder / "inception_v3_google-0cc3c7bd.pth").items()})
            model.fc = torch.nn.Identity()
            self.model = model.to(device).eval()
        else:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

            path = registry.require("fid-inception-tf", models_dir) / "weights-inception-2015-12-05-6726825d.pth"
            # torch-fidelity reads the file without weights_only; it is first proven to hold tensors only.
            _torch_weights(path)
            self.model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path)).to(device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        """Features of N x 3 x H x W images in [0,1]."""
        images = images.to(self.device)
        if self.protocol == "community":
            return self.model(community_inception_input(images)).double().cpu().numpy()
        return self.model((images * 255).round().to(torch.uint8))[0].double().cpu().numpy()


# --- the evaluation run ---------------------------------------------------------------------------


@dataclass
class EvaluationCase:
    name: str
    generated: Path
    target: Path
    source: Path | None
    mask: Path | None


@dataclass
class EvaluationRequest:
    results: Path
    ground_truth: Path
    models: Path
    folder: str = "reposed_final_result"
    size: str = "256x176"
    metrics: tuple[str, ...] = ALL_METRICS
    real: Path | None = None
    """Real set for FID (the training images); default: the ground-truth folder."""
    batch_size: int = 16
    device: str = "auto"
    out: Path | None = None
    problems: list[str] = field(default_factory=list)
    smoke: bool = False
    """The backbones are the tiny kit's: every output says its numbers mean nothing."""


SMOKE_WARNING = "SMOKE RUN: the metric networks have random weights (tiny kit); these numbers mean nothing"


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in (".png", ".jpg", ".jpeg"):
        if (folder / f"{stem}{suffix}").exists():
            return folder / f"{stem}{suffix}"
    return None


def collect_cases(request: EvaluationRequest) -> list[EvaluationCase]:
    """Every result with its ground-truth target, source and target mask; problems are noted."""
    generated = sorted((request.results / request.folder).glob("*.png"))
    if not generated:
        raise BadInputError(f"{request.results / request.folder}: no results to evaluate")
    cases = []
    for path in generated:
        source, target = split_pair_name(path.name)
        truth = _find(request.ground_truth, target)
        if truth is None:
            request.problems.append(f"{path.name}: no ground truth {target}.* in {request.ground_truth}")
            continue
        mask = request.results / "images_rgba" / f"{target}.png"
        cases.append(EvaluationCase(path.stem, path, truth, _find(request.results / "images", source), mask if mask.exists() else None))
    if not cases:
        _, example = split_pair_name(generated[0].name)
        raise BadInputError(
            f"{request.results / request.folder}: none of its {len(generated)} result(s) has a ground truth in {request.ground_truth} "
            f"(a result <source>_to_<target>.png is scored against <target>.png or .jpg there, e.g. {example}.png)"
        )
    return cases


def _tensor(images: list[Image.Image]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(image, np.float32) / 255.0 for image in images])).permute(0, 3, 1, 2)


def parse_size(text: str) -> tuple[int, int] | None:
    """``--size``: "HxW" (e.g. the field's 256x176 and 512x352) -> PIL (width, height), or None for
    ``native``: every pair at its ground truth's own frame (WPose)."""
    if text == NATIVE:
        return None
    height, _, width = text.partition("x")
    if not (height.isdigit() and width.isdigit() and int(height) > 0 and int(width) > 0):
        raise BadInputError(f"--size {text!r}: give HEIGHTxWIDTH (e.g. {', '.join(SIZES)}) or {NATIVE}")
    return int(width), int(height)


def _same_frame_batches(items: list, batch_size: int, frame_of: Callable) -> list[list]:
    """Batches of at most ``batch_size`` items of one frame each (first-seen frame order)."""
    groups: dict[tuple[int, int], list] = {}
    for item in items:
        groups.setdefault(frame_of(item), []).append(item)
    return [group[i : i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]


def _frame(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def _at_size(path: Path, size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    image = load_image(path, mode)
    return image if image.size == size else image.resize(size, Image.BICUBIC)


def evaluate(request: EvaluationRequest, echo: Callable[[str], None] = print, shared: dict | None = None) -> dict:
    """Compute the requested metrics; write metrics.json, metrics.md and report.html; return the summary.

    ``shared``, a dict kept across calls, holds the metric backbones and the real set's FID
    features per size, so that scoring several result folders loads and reads them once.
    """
    quiet_libraries()
    device = resolve_device(request.device)
    size = parse_size(request.size)
    unknown = sorted(set(request.metrics) - set(ALL_METRICS))
    if unknown:
        raise BadInputError(f"unknown metrics {', '.join(unknown)}; known: {', '.join(ALL_METRICS)}")
    wanted = set(request.metrics)
    cases = collect_cases(request)
    shared = {} if shared is None else shared

    def once(key: tuple, build: Callable):
        if key not in shared:
            shared[key] = build()
        return shared[key]

    lpips_model = once(("lpips", str(device)), lambda: Lpips(request.models, device)) if wanted & {"lpips", "lpips_pcdms", "masked_lpips"} else None
    faces = None
    if wanted & {"face_source", "face_target"}:
        faces = once(("faces", str(device)), lambda: FaceEmbedder(request.models, str(device)))
    inceptions = {
        metric: once((metric, str(device)), lambda metric=metric: InceptionFeatures(request.models, device, "community" if metric == "fid" else "standard"))
        for metric in SET_METRICS
        if metric in wanted
    }
    fake_features: dict[str, list[np.ndarray]] = {metric: [] for metric in inceptions}
    per_case: dict[str, dict[str, float]] = {case.name: {} for case in cases}

    frames = {case.name: size or _frame(case.target) for case in cases}
    evaluated = 0
    for batch in _same_frame_batches(cases, request.batch_size, lambda case: frames[case.name]):
        frame = frames[batch[0].name]
        generated_images = [_at_size(case.generated, frame) for case in batch]
        target_images = [_at_size(case.target, frame) for case in batch]
        generated, target = _tensor(generated_images), _tensor(target_images)
        scores: dict[str, torch.Tensor] = {}
        if "ssim" in wanted:
            scores["ssim"] = ssim(generated, target, "ssim")
        for variant in ("ssim_256", "ssim_pcdms"):
            if variant in wanted:
                scores[variant] = ssim(generated, target, variant)
        if "psnr" in wanted:
            scores["psnr"] = psnr(generated, target)
        if lpips_model is not None and "lpips" in wanted:
            scores["lpips"] = lpips_model(generated.to(device), target.to(device)).cpu()
        if lpips_model is not None and "lpips_pcdms" in wanted:
            g = torch.stack([pcdms_pixels(case.generated, frame) for case in batch]).to(device)
            t = torch.stack([pcdms_pixels(case.target, frame) for case in batch]).to(device)
            scores["lpips_pcdms"] = lpips_model(g, t, as_pcdms=True).cpu()
        if wanted & {"masked_ssim", "masked_psnr", "masked_lpips"}:
            masked = [i for i, case in enumerate(batch) if case.mask is not None]
            if masked:
                masks = torch.stack([
                    torch.from_numpy(np.asarray(_at_size(batch[i].mask, frame, "RGBA"))[..., 3] >= 128).float() for i in masked
                ])[:, None]
                g, t = generated[masked] * masks, target[masked] * masks
                partial = {}
                if "masked_ssim" in wanted:
                    partial["masked_ssim"] = ssim(g, t, "ssim")
                if "masked_psnr" in wanted:
                    partial["masked_psnr"] = psnr(g, t)
                if "masked_lpips" in wanted and lpips_model is not None:
                    partial["masked_lpips"] = lpips_model(g.to(device), t.to(device)).cpu()
                for metric, values in partial.items():
                    for row, value in zip(masked, values):
                        per_case[batch[row].name][metric] = float(value)
        for metric, values in scores.items():
            for case, value in zip(batch, values):
                per_case[case.name][metric] = float(value)
        if faces is not None:
            for case, image in zip(batch, generated_images):
                embedding = faces.embed(load_image(case.generated, "RGB")).embedding
                if embedding is None:
                    continue
                references = {"face_target": case.target, "face_source": case.source}
                for metric, reference in references.items():
                    if metric in wanted and reference is not None:
                        other = faces.embed(load_image(reference, "RGB")).embedding
                        if other is not None:
                            per_case[case.name][metric] = float(np.dot(embedding, other) / (np.linalg.norm(embedding) * np.linalg.norm(other)))
        for metric, extractor in inceptions.items():
            fake_features[metric].append(extractor(generated))
        evaluated += len(batch)
        echo(f"evaluated {evaluated} of {len(cases)}")

    summary: dict[str, float | int | str] = {"pairs": len(cases), "size": request.size, "folder": request.folder}
    if request.smoke:
        summary["warning"] = SMOKE_WARNING
    for metric in PAIR_METRICS:
        values = [scores[metric] for scores in per_case.values() if metric in scores]
        if metric == "lpips_pcdms" and values:
            values = pcdms_batches({name: scores[metric] for name, scores in per_case.items() if metric in scores})
            summary["lpips_pcdms_pairs"] = len(values)
        if metric in wanted and values:
            summary[metric] = float(np.mean(values))
    if inceptions:
        real_folder = request.real or request.ground_truth
        real_paths = sorted(p for p in real_folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
        if len(real_paths) < 2 or len(cases) < 2:
            request.problems.append("FID needs at least 2 real and 2 generated images")
        else:
            real_frames = {path: size or _frame(path) for path in real_paths}
            real_batches = _same_frame_batches(real_paths, request.batch_size, real_frames.get)
            for metric, extractor in inceptions.items():
                real = once(
                    (metric, "real", str(real_folder.resolve()), request.size, len(real_paths)),
                    lambda extractor=extractor: np.concatenate([extractor(_tensor([_at_size(p, real_frames[p]) for p in batch])) for batch in real_batches]),
                )
                summary[metric] = frechet_distance(np.concatenate(fake_features[metric]), real)
            summary["fid_real_images"] = len(real_paths)
    out = request.out or request.results / "evaluation"
    write_json_atomic(out / "metrics.json", {"summary": summary, "per_pair": per_case, "problems": request.problems})
    write_text_atomic(out / "metrics.md", markdown_table(summary))
    write_text_atomic(out / "report.html", html_report(summary, per_case, cases))
    for problem in request.problems:
        echo(f"note: {problem}")
    return summary


def markdown_table(summary: dict) -> str:
    metrics = [m for m in ALL_METRICS if m in summary]
    header = "| pairs | size | " + " | ".join(f"{m} {'↓' if m in LOWER_IS_BETTER else '↑'}" for m in metrics) + " |"
    rule = "|" + "---|" * (len(metrics) + 2)
    row = f"| {summary['pairs']} | {summary['size']} | " + " | ".join(f"{summary[m]:.4f}" for m in metrics) + " |"
    warning = [f"\n**{summary['warning']}**"] if "warning" in summary else []
    return "\n".join([header, rule, row, *warning]) + "\n"


def _png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _histogram(values: list[float], width: int = 240, height: int = 80, bins: int = 20) -> Image.Image:
    from PIL import ImageDraw

    image = Image.new("RGB", (width, height), "white")
    if not values:
        return image
    counts, _ = np.histogram(values, bins=bins)
    draw = ImageDraw.Draw(image)
    bar = width / bins
    for index, count in enumerate(counts):
        if count == 0:
            continue
        top = height - (height - 4) * count / max(1, counts.max())
        draw.rectangle([index * bar + 1, top, (index + 1) * bar - 1, height - 1], fill=(70, 110, 180))
    return image


def html_report(summary: dict, per_case: dict, cases: list[EvaluationCase]) -> str:
    """A self-contained page: the table, per-metric histograms, and best and worst cases by LPIPS
    (or SSIM when LPIPS was not computed), each as source | pose | result | ground truth."""
    rank_by = "lpips" if any("lpips" in s for s in per_case.values()) else "ssim"
    ranked = sorted((c for c in cases if rank_by in per_case[c.name]), key=lambda c: per_case[c.name][rank_by], reverse=rank_by not in LOWER_IS_BETTER)
    parts = [
        "<!doctype html><meta charset='utf-8'><title>oneposetrans evaluation</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}</style>",
        f"<h1>Evaluation of {html.escape(str(summary['folder']))}</h1>",
        *([f"<p style='color:#b00;font-weight:bold'>{html.escape(summary['warning'])}</p>"] if "warning" in summary else []),
        "<table><tr>" + "".join(f"<th>{html.escape(k)}</th>" for k in summary) + "</tr><tr>"
        + "".join(f"<td>{v:.4f}</td>" if isinstance(v, float) else f"<td>{html.escape(str(v))}</td>" for v in summary.values()) + "</tr></table>",
        "<h2>Per-metric histograms</h2>",
    ]
    for metric in PAIR_METRICS:
        values = [s[metric] for s in per_case.values() if metric in s]
        if values:
            parts.append(f"<figure style='display:inline-block'><img src='{_png(_histogram(values))}'><figcaption>{metric} "
                         f"(min {min(values):.3f}, max {max(values):.3f})</figcaption></figure>")
    for title, chosen in (("Best", ranked[:4]), ("Worst", ranked[::-1][:4])):
        if not chosen:
            continue
        rows = []
        for case in chosen:
            _, target = split_pair_name(case.generated.name)
            poses = case.generated.parent.parent / "poses"
            pose = next((p for p in (poses / pose_map_name(target, profile) for profile in PROFILES.values()) if p.exists()), None)
            rows.append((
                load_image(case.source, "RGB") if case.source else None,
                load_image(pose, "RGB") if pose else None,
                load_image(case.generated, "RGB"),
                load_image(case.target, "RGB"),
            ))
        sheet = render_contact_sheet(rows, ("source", "pose", "result", "ground truth"))
        names = ", ".join(html.escape(f"{c.name} ({rank_by} {per_case[c.name][rank_by]:.3f})") for c in chosen)
        parts.append(f"<h2>{title} cases by {rank_by}</h2><p>{names}</p><img src='{_png(sheet)}'>")
    return "\n".join(parts) + "\n"


def parse_metrics(text: str) -> tuple[str, ...]:
    names = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in names if m not in ALL_METRICS]
    if unknown or not names:
        raise BadInputError(f"--metrics {text!r}: known metrics are {', '.join(ALL_METRICS)}")
    return names

