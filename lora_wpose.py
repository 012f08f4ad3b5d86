"""Per-image LoRA fine-tuning for the WPose sources.

Thin front end kept under its original name; the logic lives in the `oneposetrans` package.
Equivalent: `python -m oneposetrans finetune --dataset wpose`. `--help` lists every flag.
"""

import sys

from oneposetrans.cli import run_script

if __name__ == "__main__":
    sys.exit(run_script(__file__, ["finetune", "--dataset", "wpose"]))
