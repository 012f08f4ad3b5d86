"""OnePoseTrans: one-shot pose-guided person image synthesis in the wild.

Reimplementation of Fan et al., "One-Shot Learning for Pose-Guided Person Image Synthesis
in the Wild", arXiv 2409.09593.
"""

import os

# huggingface_hub reads HF_HUB_OFFLINE once, when it is first imported, so it must be set
# before anything below pulls in diffusers or transformers. Every loader reads local folders;
# only `oneposetrans models download` runs (in a child process) with downloads allowed.
if os.environ.get("ONEPOSETRANS_ALLOW_DOWNLOADS") != "1":
    os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

__version__ = "0.1.0"
