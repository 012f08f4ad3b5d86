"""Reposing run over the DeepFashion pairs.

Thin front end kept under its original name; the logic lives in the `oneposetrans` package.
Equivalent: `python -m oneposetrans generate --dataset deepfashion`. `--help` lists every flag.
"""

import sys

from oneposetrans.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", "--dataset", "deepfashion", *sys.argv[1:]]))
