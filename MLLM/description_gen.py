"""Captions in the template 'A man/woman with face, ...' from a vision-language model.

Thin front end kept under its original name; the logic lives in the `oneposetrans` package.
Equivalent: `python -m oneposetrans caption`. `--help` lists every flag.
"""

import sys

from oneposetrans.cli import main

if __name__ == "__main__":
    sys.exit(main(["caption", *sys.argv[1:]]))
