"""Device and precision choice, made explicitly per run (never by setting CUDA_VISIBLE_DEVICES).

torch is imported by the functions that use it: the stage modules that ``--help`` reads import
this one, and ``--help`` stays free of torch.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

from oneposetrans.errors import EnvironmentProblem

if TYPE_CHECKING:
    import torch


def check_device_available(name: str) -> None:
    """A CUDA device that is not there fails at once, in one line, not at the first model load."""
    import torch

    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EnvironmentProblem(f"--device {name}: no CUDA GPU is available here; use --device cpu (or auto)")


def resolve_device(name: str = "auto") -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """fp16 on a GPU as in the published code; fp32 on the CPU, where half precision is slow."""
    import torch

    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[name]


def quiet_libraries() -> None:
    """Silence per-file progress bars and advisory warnings of the model libraries."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    # The pipeline also returns its warnings as notes, which the stages report themselves.
    logging.getLogger("oneposetrans.pipeline_stable_diffusion_xl_oneposetrans").setLevel(logging.ERROR)
    # insightface's alignment calls a scikit-image API that announces its own deprecation.
    warnings.filterwarnings("ignore", category=FutureWarning, module="insightface")
