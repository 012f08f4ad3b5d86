"""DeepFashion train/test split with the published file renaming.

Thin front end kept under its original name; the logic lives in the `oneposetrans` package.
Equivalent: `python -m oneposetrans prepare-deepfashion`. `--help` lists every flag.
"""

import sys

from oneposetrans.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare-deepfashion", *sys.argv[1:]]))
