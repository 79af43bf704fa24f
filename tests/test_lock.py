"""Every requirement is pinned, with hashes, in requirements/lock.txt, inside its range."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"


def read_lock() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, sha256 hashes); a requirement without '==' or hashes is an error."""
    entries: dict[str, tuple[str, list[str]]] = {}
    for block in re.split(r"\n(?=\S)", LOCK.read_text()):
        first = block.split("\\", 1)[0].strip()
        if not first or first.startswith("#"):
            continue
        name, sep, version = first.partition("==")
        assert sep and version.strip(), f"lock entry {first!r} is not pinned with =="
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", block)
        assert hashes, f"lock entry {first!r} has no sha256 hash"
        entries[canonicalize_name(name)] = (version.strip(), hashes)
    return entries


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + project["optional-dependencies"]["dev"]
    for line in (ROOT / "requirements" / "mm.in").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return [Requirement(line) for line in lines]


def test_every_requirement_is_locked_with_hashes_inside_its_range():
    locked = read_lock()
    assert len(locked) > 50  # the whole tested set, torch's CUDA wheels included
    for requirement in project_requirements():
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement} is not in {LOCK.name}: run make lock"
        version = locked[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{LOCK.name} pins {name}=={version}, outside pyproject's {requirement}: run make lock")


def test_mmcv_source_archive_is_pinned_by_sha256():
    script = (ROOT / "scripts" / "install_mm.sh").read_text()
    assert re.search(r"^MMCV_SDIST_SHA256=[0-9a-f]{64}$", script, re.M)
    assert "sha256sum --check" in script and "--require-hashes" in script


@pytest.mark.parametrize("target", ["$(STAMP):", "lock:"])
def test_makefile_installs_and_regenerates_from_the_lock(target):
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split(target, 1)[1].split("\n\n", 1)[0]
    if target == "lock:":
        assert "--generate-hashes" in recipe and "pyproject.toml" in recipe
    else:
        assert "$(PIP_LOCKED) -r $(LOCK)" in recipe and "--no-deps" in recipe
        assert "--require-hashes" in makefile.split("PIP_LOCKED :=", 1)[1].splitlines()[0]
