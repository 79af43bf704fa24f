"""Read python-pickle data files (CIFAR's batches) without running code from them.

A pickle names the callables that rebuild its objects; a normal ``pickle.load`` imports
and calls whatever it names. :func:`load_data_pickle` allows only what numpy needs to
rebuild a plain array (and containers, strings, bytes, numbers, which need no callable),
and refuses anything else with the name it met.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

ALLOWED = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype"),
     ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
     # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(text, 'latin1'): a pure
     # str -> bytes conversion. (Python 2 files, like the official CIFAR ones, need none.)
     ("_codecs", "encode")}


class RefusedPickle(pickle.UnpicklingError):
    """The file asks for a callable outside the allow-list."""


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED:
            raise RefusedPickle(f"refuses to load {module}.{name}: only numpy arrays, lists, dicts, "
                                "strings, bytes and numbers are read")
        return super().find_class(module, name)


def load_data_pickle(path: str | Path):
    """The object in ``path``; Python 2 strings come back as bytes (``encoding='bytes'``,
    as CIFAR's own loading code does)."""
    data = Path(path).read_bytes()
    return _ArraysOnly(io.BytesIO(data), encoding="bytes").load()
