"""The OnePoseTrans SDXL pipeline, importable under its original module name.

Not built yet: the pipeline class with the Visual Consistency Module is issue 3. Until then
importing this module fails with that message, and running it exits with status 2.
"""

import sys

_MESSAGE = (
    "StableDiffusionXLOnePoseTransPipeline is not built yet (tracked in issue 3); "
    "`python -m oneposetrans repose` currently runs the stock SDXL ControlNet path."
)

if __name__ == "__main__":
    print(f"oneposetrans: error: {_MESSAGE}", file=sys.stderr)
    sys.exit(2)
raise ImportError(_MESSAGE)
