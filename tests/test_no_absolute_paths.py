"""No tracked file points at a home, work or temp folder of one machine.

Commands in docs and results must run from any checkout, so they use paths relative to the
repository root; a path such as a scratch folder under the temp directory in a recorded
command is replaced by a relative one (or a placeholder) before it is committed.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# A path that starts at one of these folders, not preceded by a character that would make it
# part of a longer relative path or URL (results/tmp/..., https://host/work/...).
MACHINE_PATH = re.compile(r"(?<![\w.~$/-])/(?:home|root|work|tmp|var/tmp|scratch|mnt|Users)(?=/|\b)(?![\w-])")
# Deliberate mentions: the pattern above, written out in this file.
ALLOWED_FILES = {"tests/test_no_absolute_paths.py"}


def tracked_text_files() -> list[Path]:
    try:
        names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = []
    for name in names.decode().split("\0"):
        path = ROOT / name
        if name and name not in ALLOWED_FILES and path.is_file():
            head = path.read_bytes()[:8192]
            if b"\0" not in head:  # binary files (images, checkpoints) carry no commands
                files.append(path)
    return files


def test_no_tracked_file_contains_a_machine_path():
    hits = []
    for path in tracked_text_files():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for match in MACHINE_PATH.finditer(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: ...{line[max(match.start() - 30, 0):match.end() + 30]}...")
    assert not hits, f"{len(hits)} absolute paths of one machine (use paths relative to the repository):\n" + "\n".join(hits[:40])


@pytest.mark.parametrize("text, found", [
    ("--work /tmp/x/runs", True), ("cd /work/main && make", True), ("~/.cache or /root/.cache", True),
    ("/home/me/data", True), ("`/tmp`", True), ("> /dev/null 2>&1", False), ("results/tmp/x", False),
    ("https://example.org/work/x", False), ("$HOME/.cache/tcjepa", False), ("/worker-1", False),
    ("data.root=/data/in1k", False), ("${TMPDIR}/x", False),
])
def test_pattern(text, found):
    assert bool(MACHINE_PATH.search(text)) == found


def test_benchmarks_record_their_script_relative_to_the_repository():
    import torch

    from benchmarks.common import metadata

    meta = metadata(torch.device("cpu"), [str(ROOT / "benchmarks" / "loader.py"), "--out", "results/bench"])
    assert meta["argv"] == ["benchmarks/loader.py", "--out", "results/bench"]
