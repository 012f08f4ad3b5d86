"""Evaluation throughput benchmark (not a test): batched metrics versus a per-image scikit-image loop.

    python bench/evaluate_bench.py            # 200 synthetic pairs at 256x176, CPU (or --device cuda)

Both paths compute the same two SSIM variants and PSNR of the same pairs (the community's
settings, README *Evaluation*): ours with batched separable convolutions in torch
(`oneposetrans.evaluate.ssim/psnr`), the reference with scikit-image's `structural_similarity` and
`peak_signal_noise_ratio` called once per image, as the GFLA/CFLD scripts do. The largest
difference between the two is printed too. One run, images per second, and the ratio.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from oneposetrans.evaluate import psnr, ssim


def _pairs(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.random((count, 256, 176, 3)).astype(np.float32)
    return base, np.clip(base + rng.normal(0, 0.1, base.shape).astype(np.float32), 0, 1)


def scikit_image_loop(generated: np.ndarray, target: np.ndarray) -> np.ndarray:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    rows = []
    for g, t in zip(generated.astype(np.float64), target.astype(np.float64)):
        g255, t255 = g * 255, t * 255
        rows.append((
            structural_similarity(g, t, win_size=51, data_range=1, channel_axis=2),
            structural_similarity(g255, t255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                  data_range=g255.max() - g255.min(), channel_axis=2),
            peak_signal_noise_ratio(t, g, data_range=1),
        ))
    return np.array(rows)


def batched(generated: np.ndarray, target: np.ndarray, device: str, batch: int) -> np.ndarray:
    rows = []
    for first in range(0, len(generated), batch):
        g = torch.from_numpy(generated[first : first + batch]).permute(0, 3, 1, 2).to(device)
        t = torch.from_numpy(target[first : first + batch]).permute(0, 3, 1, 2).to(device)
        rows.append(torch.stack([ssim(g, t, "ssim"), ssim(g, t, "ssim_256"), psnr(g, t)], dim=1).cpu().numpy())
    return np.concatenate(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    arguments = parser.parse_args()
    generated, target = _pairs(arguments.pairs)
    batched(generated[:2], target[:2], arguments.device, 2)  # warm-up
    started = time.perf_counter()
    ours = batched(generated, target, arguments.device, arguments.batch)
    ours_seconds = time.perf_counter() - started
    started = time.perf_counter()
    reference = scikit_image_loop(generated, target)
    reference_seconds = time.perf_counter() - started
    print(f"{arguments.pairs} pairs at 256x176 (ssim, ssim_256, psnr); torch {torch.__version__}, {torch.get_num_threads()} threads, {arguments.device}")
    print(f"batched (oneposetrans):     {arguments.pairs / ours_seconds:8.1f} pairs/s  ({ours_seconds:.2f} s)")
    print(f"per-image scikit-image:     {arguments.pairs / reference_seconds:8.1f} pairs/s  ({reference_seconds:.2f} s)")
    print(f"speed-up: {reference_seconds / ours_seconds:.2f}x; largest difference {np.abs(ours - reference).max():.2e}")


if __name__ == "__main__":
    main()
