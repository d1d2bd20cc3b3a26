"""The release files agree with each other: pyproject.toml, requirements.txt, LICENSE,
CHANGELOG.md, py.typed and MANIFEST.in.

These read files only (no build, no network): .ci/run builds and installs the real wheel.
"""

from __future__ import annotations

import importlib.resources
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

import moa_cli

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def project() -> dict:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["project"]


def _requirements_txt() -> dict[str, Requirement]:
    pins: dict[str, Requirement] = {}
    for n, raw in enumerate((ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name not in pins, f"requirements.txt:{n}: {req.name} is listed twice"
        pins[name] = req
    return pins


def test_requirements_txt_names_exactly_the_runtime_dependencies(project: dict) -> None:
    declared = {canonicalize_name(Requirement(d).name) for d in project["dependencies"]}
    pinned = set(_requirements_txt())
    assert pinned == declared, (
        f"only in pyproject.toml: {sorted(declared - pinned)}; only in requirements.txt: {sorted(pinned - declared)}"
    )


def test_every_pin_is_exact_and_satisfies_the_pyproject_range(project: dict) -> None:
    declared = {canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"])}
    ranges: dict[str, SpecifierSet] = {name: r.specifier for name, r in declared.items()}
    for name, req in _requirements_txt().items():
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{req}: pin it with == and one version"
        pin = Version(specs[0].version)
        assert ranges[name].contains(pin, prereleases=True), f"{req} is outside pyproject.toml's {name}{ranges[name]}"
        assert not req.extras, f"{req}: no extras in requirements.txt"
        marker = str(declared[name].marker) if declared[name].marker else None
        assert (str(req.marker) if req.marker else None) == marker, (
            f"{req}: the marker must be pyproject.toml's ({marker})"
        )


def test_license_is_the_apache_2_text_and_the_metadata_says_so(project: dict) -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    for section in ("1. Definitions.", "3. Grant of Patent License.", "9. Accepting Warranty or Additional Liability."):
        assert section in text, f"LICENSE lacks {section!r}: not the whole Apache-2.0 text"
    assert "END OF TERMS AND CONDITIONS" in text
    assert project["license"] == "Apache-2.0"
    assert "LICENSE" in project["license-files"]
    # setuptools refuses a License classifier beside a license expression (PEP 639).
    assert not [c for c in project["classifiers"] if c.startswith("License ::")]


def test_changelog_has_the_current_version_and_an_unreleased_section() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## \[([^\]]+)\]", changelog, flags=re.MULTILINE)
    assert "Unreleased" in headings, "Keep a Changelog: keep an [Unreleased] section at the top"
    assert headings[0] == "Unreleased"
    assert moa_cli.__version__ in headings, f"CHANGELOG.md has no '## [{moa_cli.__version__}]' section"
    released = [Version(h) for h in headings if h != "Unreleased"]
    assert released == sorted(released, reverse=True), "versions must run newest first"
    assert released[0] == Version(moa_cli.__version__), "moa_cli.__version__ is not the newest release listed"


def test_package_is_marked_typed(project: dict) -> None:
    assert (ROOT / "moa_cli" / "py.typed").is_file()
    assert importlib.resources.files("moa_cli").joinpath("py.typed").is_file()
    with (ROOT / "pyproject.toml").open("rb") as f:
        package_data = tomllib.load(f)["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data["moa_cli"], "py.typed must be declared as package data to reach the wheel"
    assert "Typing :: Typed" in project["classifiers"]


def test_classifiers_name_the_supported_pythons(project: dict) -> None:
    floor = SpecifierSet(project["requires-python"])
    versions = [
        c.rsplit("::", 1)[1].strip()
        for c in project["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    ]
    assert versions, "no 'Programming Language :: Python :: 3.N' classifiers"
    assert all(floor.contains(v) for v in versions), f"{versions} vs requires-python {floor}"


def test_sdist_manifest_carries_the_tests_and_release_files() -> None:
    manifest = (ROOT / "MANIFEST.in").read_text(encoding="utf-8")
    assert re.search(r"^recursive-include tests \*\.py", manifest, flags=re.MULTILINE)
    for name in ("CHANGELOG.md", "requirements.txt"):
        assert name in manifest
