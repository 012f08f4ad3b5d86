"""Reposing run over the WPose pairs.

Thin front end kept under its original name; the logic lives in the `oneposetrans` package.
Equivalent: `python -m oneposetrans generate --dataset wpose`. `--help` lists every flag.
"""

import sys

from oneposetrans.cli import run_script

if __name__ == "__main__":
    sys.exit(run_script(__file__, ["generate", "--dataset", "wpose"]))
