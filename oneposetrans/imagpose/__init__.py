"""IMAGPose (Shen & Tang, NeurIPS 2024): pose-guided person generation on a 2x2 joint canvas.

One denoising pass of an SD1.5 UNet fills the canvas's empty tiles: the given tiles (sources)
and the flag map enter as image-level conditions (ILC, a 9-channel input), a pose encoder adds
every tile's pose after ``conv_in``, DINOv2 and VAE-latent tokens of a source are the cross-
attention context (FLC), and cross-view attention (CVA) runs over the four tiles at every
resolution. The scenarios (1 -> 1, 1 -> N, K -> 1) are ways of filling the canvas
(:mod:`oneposetrans.imagpose.canvas`). The subpackage shares the results tree, pose rendering,
datasets and evaluation with OnePoseTrans.
"""

__all__ = ["ImagPosePipeline"]


def __getattr__(name: str):
    # Imported on first use: the CLI imports this package for its flags, and --help stays free of torch.
    if name == "ImagPosePipeline":
        from oneposetrans.imagpose.pipeline_imagpose import ImagPosePipeline

        return ImagPosePipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
