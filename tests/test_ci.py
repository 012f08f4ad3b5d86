import re

from tests.conftest import REPO


def _readme_command(label: str) -> str:
    readme = (REPO / "README.md").read_text()
    match = re.search(rf"<!-- {label} -->\n```(?:bash|sh)?\n(.*?)\n```", readme, re.S)
    assert match, f"README lacks the {label} command block"
    return match.group(1).strip()


def test_ci_runs_exactly_the_readme_install_and_test_commands():
    ci = (REPO / ".ci" / "run").read_text()
    for label in ("install", "test"):
        for line in _readme_command(label).splitlines():
            assert line.strip() in ci, f"{label} command line {line!r} is not in .ci/run"
