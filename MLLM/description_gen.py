"""Captions in the template 'A man/woman with face, ...' from a vision-language model.

Thin front end kept under its original name; the logic lives in the `oneposetrans` package.
Equivalent: `python -m oneposetrans caption`. `--help` lists every flag.
"""

import sys

from oneposetrans.cli import run_script

if __name__ == "__main__":
    sys.exit(run_script(__file__, ["caption"]))
