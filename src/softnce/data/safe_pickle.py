"""A restricted unpickler for the CIFAR python batches: only numpy array reconstruction is
allowed, and array sizes are checked before anything is allocated (a file that would run code
or ask for terabytes is refused with a clear error)."""

from __future__ import annotations

import contextvars
import io
import pickle
from pathlib import Path
from typing import Any

from softnce.data import DataError


class DatasetFormatError(DataError):
    """A data set file exists but its content does not have the documented layout."""


_MAX_ARRAY_BYTES = contextvars.ContextVar("softnce_max_array_bytes", default=1 << 30)


def _check_array_size(shape: Any, dtype: Any) -> None:
    import numpy as np

    if isinstance(shape, int):
        shape = (shape,)
    if not isinstance(shape, tuple) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise pickle.UnpicklingError(f"array shape {shape!r} is not a tuple of sizes")
    n = 1
    for d in shape:
        n *= d
    nbytes = n * np.dtype(dtype).itemsize
    limit = _MAX_ARRAY_BYTES.get()
    if nbytes > limit:
        raise pickle.UnpicklingError(
            f"an array of shape {shape} ({nbytes} bytes) cannot come from a file of {limit} "
            f"bytes")


def _np_reconstruct(subtype, shape, dtype):
    """Stand-in for ``numpy.core.multiarray._reconstruct`` that only builds plain ndarrays
    (of a size the file can hold)."""
    import numpy as np

    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"array subtype {subtype!r} is not allowed")
    dt = _np_dtype(dtype)
    _check_array_size(shape, dt)
    return np.ndarray.__new__(np.ndarray, shape, dt)


def _np_dtype(*args):
    """Stand-in for ``numpy.dtype`` that refuses object dtypes."""
    import numpy as np

    dt = np.dtype(*args)
    if dt.hasobject:
        raise pickle.UnpicklingError("numpy object arrays are not allowed")
    return dt


def _np_frombuffer(buf, dtype, shape, order="C"):
    """Stand-in for ``numpy._core.numeric._frombuffer`` (pickle protocol 5 arrays)."""
    import numpy as np

    dt = _np_dtype(dtype)
    _check_array_size(tuple(shape) if isinstance(shape, (list, tuple)) else shape, dt)
    if order not in ("C", "F", "A", "K"):
        raise pickle.UnpicklingError(f"array order {order!r} is not allowed")
    return np.frombuffer(buf, dtype=dt).reshape(shape, order="F" if order == "F" else "C")


def _codecs_encode(text, encoding="utf-8"):
    """Stand-in for ``_codecs.encode``: protocol-2 pickles store ``bytes`` as
    ``_codecs.encode(text, 'latin1')``. Only that conversion, str -> bytes, is performed."""
    if not isinstance(text, str) or str(encoding).lower().replace("-", "") not in (
        "latin1", "utf8", "ascii"
    ):
        raise pickle.UnpicklingError("only _codecs.encode(str, 'latin1') is allowed")
    return text.encode(encoding)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals needed for plain numpy arrays.

    Dicts, lists, tuples, str, bytes, ints and floats need no globals at all. Numpy arrays pickle
    as ``_reconstruct(ndarray, shape, dtype)`` + ``__setstate__`` (or ``_frombuffer`` under
    protocol 5), and protocol-2 ``bytes`` as ``_codecs.encode(text, 'latin1')``; these map to
    the checked stand-ins above. Everything else (functions, classes, ``os.system`` ...) is refused.
    """

    def find_class(self, module: str, name: str) -> Any:
        import numpy as np

        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return _np_reconstruct
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return _np_dtype
        if module in ("numpy.core.numeric", "numpy._core.numeric") and name == "_frombuffer":
            return _np_frombuffer
        if module == "_codecs" and name == "encode":
            return _codecs_encode
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data file")


def safe_unpickle(path: str | Path) -> Any:
    """Unpickle a data file with :class:`_RestrictedUnpickler` (``encoding='latin1'`` so the
    Python 2 pickles of the official CIFAR archives load).

    Raises:
        DatasetFormatError: the file is not a pickle, or references anything beyond plain
            containers and numpy arrays (such a file could execute code and is never loaded).
    """
    path = Path(path)
    data = path.read_bytes()
    token = _MAX_ARRAY_BYTES.set(len(data))
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except MemoryError:
        raise DatasetFormatError(f"refusing to unpickle {path}: it asks for more memory than "
                                 f"its {len(data)} bytes can hold") from None
    except pickle.UnpicklingError as e:
        raise DatasetFormatError(
            f"refusing to unpickle {path}: {e}. The official CIFAR pickles contain only dicts, "
            "lists, bytes, ints and numpy uint8 arrays; anything else could execute code."
        ) from e
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            OverflowError, RecursionError) as e:
        raise DatasetFormatError(f"cannot read {path} as a CIFAR pickle: {e}") from e
    finally:
        _MAX_ARRAY_BYTES.reset(token)


