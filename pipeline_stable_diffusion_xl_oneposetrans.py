"""The OnePoseTrans SDXL pipeline under its original module name (a re-export).

    from pipeline_stable_diffusion_xl_oneposetrans import StableDiffusionXLOnePoseTransPipeline

The class lives in ``oneposetrans/pipeline_stable_diffusion_xl_oneposetrans.py``.
"""

from oneposetrans.pipeline_stable_diffusion_xl_oneposetrans import (  # noqa: F401
    OnePoseTransPipelineOutput,
    StableDiffusionXLOnePoseTransPipeline,
)

__all__ = ["OnePoseTransPipelineOutput", "StableDiffusionXLOnePoseTransPipeline"]
