"""Gradio demo of the whole in-the-wild flow.

Thin front end kept under its original name; the logic lives in the `oneposetrans` package.
Equivalent: `python -m oneposetrans demo`. `--help` lists every flag.
"""

import sys

from oneposetrans.cli import run_script

if __name__ == "__main__":
    sys.exit(run_script(__file__, ["demo"]))
