"""The profile object: one frozen set of policies per profile, the README's table generated from it,
and no code that compares profile names."""

import dataclasses
import re
import subprocess

import pytest

from oneposetrans.profiles import DEFAULT, PROFILES, REFERENCE, ROWS, Profile, markdown_table, profile_named
from tests.conftest import REPO


def test_readme_profiles_table_is_generated_from_the_profile_object():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- profiles-table -->\n(.*?)\n<!-- /profiles-table -->", readme, re.S)
    assert block, "README lacks the generated profiles table"
    assert block.group(1).strip() == markdown_table().strip()


def test_every_policy_is_described_once_and_the_profiles_differ_in_every_row():
    fields = [f.name for f in dataclasses.fields(Profile) if f.name != "name"]
    described = [name for row in ROWS for name in row.fields]
    assert sorted(described) == sorted(fields) and len(set(described)) == len(described)
    for row in ROWS:
        assert any(getattr(REFERENCE, name) != getattr(DEFAULT, name) for name in row.fields), row.stage


def test_profiles_are_frozen_and_named_once():
    assert list(PROFILES) == ["default", "reference"] and profile_named("reference") is REFERENCE
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT.fast_step = False
    variant = DEFAULT.replace(fast_step=False)
    assert variant.fast_step is False and DEFAULT.fast_step is True and variant.name == "default"
    with pytest.raises(ValueError, match="unknown profile"):
        profile_named("published")


def test_no_code_compares_profile_names():
    """Code reads a policy (``profile.paste_matte``), never ``profile == "reference"``."""
    found = subprocess.run(
        ["git", "grep", "-n", "-E", r"""profile(\.name)? *[!=]= *["'](reference|default)["']""", "--", "oneposetrans", "bench", ":(glob)*.py"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert found.stdout == "", found.stdout
