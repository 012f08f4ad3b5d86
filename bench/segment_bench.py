"""Segmentation benchmark (not a test): a folder of images, models loaded once versus per image.

    python bench/segment_bench.py                  # tiny kit, 20 images, CPU or GPU
    python bench/segment_bench.py --models models  # the real GroundingDINO + SAM folders

The published tool_utils.py builds GroundingDINO and SAM inside its per-image loop (and the
demo on every click). Both paths here run the same code for one image, `PersonSegmenter.segment`
plus the same writes; "reloaded" constructs the segmenter for every image as the original does,
"loaded once" is `oneposetrans segment`. One run, both paths, the ratio printed at the end.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import oneposetrans  # noqa: F401  (sets HF_HUB_OFFLINE before the hub libraries load)
from oneposetrans.image_io import load_image
from oneposetrans.runtime import resolve_device
from oneposetrans.segment import PersonSegmenter, SegmentOutputs
from oneposetrans.testing import cached_tiny_models


def _images(folder: Path, count: int) -> list[Path]:
    from PIL import Image
    from skimage import data

    photo = Image.fromarray(data.astronaut())
    paths = []
    for index in range(count):
        # Different sizes and crops, so no cache can make later images free.
        side = 384 + 32 * (index % 5)
        path = folder / f"person{index:02d}.png"
        photo.crop((index, 0, 512, 512 - index)).resize((side, side + 16 * (index % 3))).save(path)
        paths.append(path)
    return paths


def _run(paths: list[Path], out: Path, models: Path, device: str, reload_each: bool) -> float:
    outputs = SegmentOutputs.for_mode("dataset", out / "mask", out / "rgba", None)
    for folder in (outputs.mask, outputs.rgba):
        folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    segmenter = None
    for path in paths:
        if reload_each or segmenter is None:
            segmenter = PersonSegmenter(models, device)
        image = load_image(path, "RGB")
        outputs.write(image, segmenter.segment(image, name=str(path)), path.stem)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, help="models folder (default: the tiny kit)")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--device", default="auto")
    arguments = parser.parse_args()
    import torch

    if arguments.models is None:
        arguments.models = cached_tiny_models()
    device = str(resolve_device(arguments.device))
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        paths = _images(scratch, arguments.images)
        _run(paths[:1], scratch / "warm", arguments.models, device, reload_each=False)  # imports, kernels
        once = _run(paths, scratch / "once", arguments.models, device, reload_each=False)
        reloaded = _run(paths, scratch / "reloaded", arguments.models, device, reload_each=True)
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
    print(f"models: {arguments.models}")
    print(f"device: {name}; {arguments.images} images")
    print(f"loaded once:       {once:7.2f} s  ({once / arguments.images:.3f} s/image)")
    print(f"reloaded per image:{reloaded:7.2f} s  ({reloaded / arguments.images:.3f} s/image)")
    print(f"ratio reloaded / once: {reloaded / once:.2f}x")


if __name__ == "__main__":
    main()
