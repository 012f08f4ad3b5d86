"""Reposing run over the WPose pairs.

Thin front end kept under its original name; the logic lives in the `oneposetrans` package.
Equivalent: `python -m oneposetrans generate --dataset wpose`. `--help` lists every flag.
"""

import sys

from oneposetrans.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", "--dataset", "wpose", *sys.argv[1:]]))
