"""The embedded MiniLM is checked against its published hashes; other folders are not."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tcjepa.text import encoder as encoder_module
from tcjepa.text import verify
from tcjepa.text.encoder import FrozenTextEncoder, resolve_text_encoder
from tcjepa.text.verify import ALLOW_MODIFIED_ENV, EXPECTED_FILES, EncoderIntegrityError, verify_embedded_encoder


@pytest.fixture()
def stamp_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TCJEPA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(ALLOW_MODIFIED_ENV, raising=False)
    return tmp_path / "cache"


@pytest.fixture()
def tampered_copy(tmp_path):
    """A copy of the installed MiniLM folder whose weights differ in one byte."""
    copy = tmp_path / "minilm-copy"
    shutil.copytree(encoder_module._minilm_folder(), copy)
    weights = copy / "model.safetensors"
    with weights.open("r+b") as f:  # a byte in the last tensor's data: still loads fine
        f.seek(-5, 2)
        byte = f.read(1)
        f.seek(-5, 2)
        f.write(bytes([byte[0] ^ 0x01]))
    return copy


def test_installed_minilm_matches_the_published_hashes(stamp_dir):
    folder = encoder_module._minilm_folder()
    assert verify_embedded_encoder(folder) == folder
    for name, (sha256, size) in EXPECTED_FILES.items():
        assert verify.file_problem(folder / name, sha256, size) is None, name


def test_verdict_is_cached_until_a_file_changes(stamp_dir, tmp_path, monkeypatch):
    copy = tmp_path / "copy"
    shutil.copytree(encoder_module._minilm_folder(), copy)
    hashed = []
    real = verify.file_problem
    monkeypatch.setattr(verify, "file_problem", lambda path, *a: hashed.append(path.name) or real(path, *a))
    verify_embedded_encoder(copy)
    assert sorted(hashed) == sorted(EXPECTED_FILES)
    hashed.clear()
    verify_embedded_encoder(copy)
    assert hashed == []  # the stamp answered
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("384", "385"))
    with pytest.raises(EncoderIntegrityError, match="config.json"):
        verify_embedded_encoder(copy)


def test_tampered_weights_are_refused_with_one_line(stamp_dir, tampered_copy):
    with pytest.raises(EncoderIntegrityError) as info:
        verify_embedded_encoder(tampered_copy)
    message = str(info.value)
    assert "\n" not in message
    assert str(tampered_copy / "model.safetensors") in message
    assert EXPECTED_FILES["model.safetensors"][0] in message  # what was expected
    assert f"{ALLOW_MODIFIED_ENV}=1" in message  # how to override on purpose


def test_tampered_embedded_encoder_is_refused_at_load_and_by_the_cli(stamp_dir, tampered_copy, monkeypatch, tmp_path):
    monkeypatch.setattr(encoder_module, "_minilm_folder", lambda: tampered_copy)
    with pytest.raises(EncoderIntegrityError, match="model.safetensors"):
        FrozenTextEncoder("minilm")
    # The same copy given as a folder is someone's own model: not checked.
    assert resolve_text_encoder(str(tampered_copy)) == str(tampered_copy.resolve())
    monkeypatch.setenv(ALLOW_MODIFIED_ENV, "1")
    assert resolve_text_encoder("minilm") == str(tampered_copy)


def test_cli_prints_the_refusal_as_one_line(stamp_dir, tampered_copy, tmp_path):
    # run_cli wraps every command's main: the refusal is one line on stderr, exit code 2.
    script = (
        "import sys; from tcjepa.text import encoder; "
        f"encoder._minilm_folder = lambda: __import__('pathlib').Path({str(tampered_copy)!r}); "
        "from tcjepa.cli.errors import run_cli; "
        "sys.exit(run_cli(lambda: encoder.resolve_text_encoder('minilm') and 0))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "model.safetensors" in lines[0], result.stderr
