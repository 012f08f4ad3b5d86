"""Segmentation, inpainting and compositing modes of the original tool_utils.py.

Thin front end kept under its original name; the logic lives in the `oneposetrans` package.
Equivalent: `python -m oneposetrans tool-utils --mode ...`. `--help` lists every flag.
"""

import sys

from oneposetrans.cli import run_script

if __name__ == "__main__":
    sys.exit(run_script(__file__, ["tool-utils"]))
