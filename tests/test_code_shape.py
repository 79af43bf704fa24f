"""The project's size rules, checked: no file in tcjepa/ or evals/ over 400 lines, no function
over 80 lines (a long function or file is where a newcomer gets lost)."""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 80
SOURCES = sorted(p for package in ("tcjepa", "evals") for p in (REPO / package).rglob("*.py"))


def test_there_are_sources():
    assert len(SOURCES) > 40


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_file_and_function_lengths(path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_FILE_LINES, f"{path.relative_to(REPO)}: over {MAX_FILE_LINES} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, (
                f"{path.relative_to(REPO)}:{node.lineno} {node.name}() is {length} lines (over {MAX_FUNCTION_LINES})")
