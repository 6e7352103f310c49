"""Atomic, deterministic writing of results (JSON), text (Markdown) and figures (PNG).

Every writer here builds the whole file content in memory first, then writes it to a
temporary file in the destination directory, flushes and ``fsync``s it, and moves it over
the destination with ``os.replace`` (atomic on POSIX and Windows). A reader therefore sees
either the old file or the new one, never a half-written one, and a failure at any point
(serialisation, a full disk, a killed process) leaves the old file untouched and no
temporary file behind.

JSON policy (``write_json``):

* numpy scalars and arrays, and anything with ``__array__`` (JAX arrays), become plain
  ``bool`` / ``int`` / ``float`` / nested lists; tuples become lists; frozen dataclasses
  (configs) become dicts of their fields; ``os.PathLike`` becomes ``str``.
* Mapping keys must be ``str`` or integers; integer keys are written as their decimal
  string (JSON has only string keys), so ``read_json`` gives them back as ``str``.
* NaN and +-inf are **refused**: JSON has no such values, and a silent ``null`` would hide a
  broken computation. The error names the key path (e.g. ``$.bits_sweep[3].margin``). Store
  ``None`` yourself for a value that is undefined by construction.
* Output is deterministic: keys sorted, 2-space indent, UTF-8, trailing newline; float64
  values use Python's shortest round-trip ``repr``; lower-precision floats (float32,
  float16, bfloat16, ...) use the shortest decimal that round-trips *in their own dtype*
  (``np.float32(0.1)`` is written ``0.1``, not ``0.10000000149011612``). The same results
  give byte-identical files.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "OutputError",
    "atomic_write",
    "write_text",
    "write_json",
    "read_json",
    "to_jsonable",
    "json_dumps",
    "save_figure",
    "FIGURE_DPI",
]

#: Resolution of every saved PNG (dots per inch).
FIGURE_DPI = 150


class OutputError(OSError):
    """An output file could not be written.

    Attributes:
        path: the file that was being written.
        reason: why it failed, in words (e.g. ``"directory /x is not writable"``).
    """

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"cannot write {path!r}: {reason}")
        self.filename = path

    def __str__(self) -> str:
        return f"cannot write {self.path!r}: {self.reason}"

    def __reduce__(self):
        return (type(self), (self.path, self.reason))


# ---------------------------------------------------------------------------- atomic writing


def _new_file_mode() -> int:
    """Permission bits of a new file under the process umask (read once, without changing it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o644


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same directory + ``os.replace``).

    Missing parent directories are created. ``str`` data is encoded as UTF-8. An existing
    file keeps its permission bits; a new one gets the usual ``0o666 & ~umask``.

    Args:
        path: destination file.
        data: the complete file content.

    Raises:
        OutputError: the directory cannot be created or written, or the write failed; the
            message names the path and the reason. The old file, if any, is untouched and no
            temporary file remains.
        TypeError: ``data`` is neither ``bytes`` nor ``str``.

    Example:
        >>> atomic_write("/tmp/bq_jax_doc_example.txt", "hello\\n")
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    elif isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    elif not isinstance(data, bytes):
        raise TypeError(f"atomic_write: data must be bytes or str, got {type(data).__name__}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise OutputError(path, "it is a directory")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise OutputError(path, f"cannot create directory {directory!r} ({e.strerror or e})") from e
    try:
        fd, tmp = tempfile.mkstemp(
            dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp"
        )
    except OSError as e:
        raise OutputError(
            path, f"directory {directory!r} is not writable ({e.strerror or e})"
        ) from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            mode = os.stat(path).st_mode & 0o7777
        except FileNotFoundError:
            mode = _new_file_mode()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and not isinstance(e, OutputError):
            raise OutputError(path, f"write failed ({e.strerror or e})") from e
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Make the rename durable where the platform allows it (best effort, POSIX only)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically; see :func:`atomic_write`.

    Example:
        >>> write_text("/tmp/bq_jax_doc_report.md", "# Title\\n")
    """
    if not isinstance(text, str):
        raise TypeError(f"write_text: text must be str, got {type(text).__name__}")
    atomic_write(path, text)


# ---------------------------------------------------------------------------- JSON


def _path_str(parts: tuple) -> str:
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def _float_value(x: float, where: tuple) -> float:
    if not math.isfinite(x):
        raise ValueError(
            f"cannot write {x} at {_path_str(where)} to JSON: NaN and infinity are refused "
            "(JSON has no such values); store None for a value that is undefined by "
            "construction, or fix the computation that produced it"
        )
    return x


def _low_precision_float(x: Any, where: tuple) -> float:
    """Shortest decimal that round-trips in the value's own dtype, as a Python float."""
    value = float(x)
    _float_value(value, where)
    if isinstance(x, (np.float32, np.float16)):
        return float(str(x))  # numpy prints the shortest round-trip decimal of its dtype
    dtype = type(x)
    for digits in range(1, 18):
        candidate = float(f"{value:.{digits}g}")
        if dtype(candidate) == x:
            return candidate
    return value


def _array_to_list(arr: np.ndarray, where: tuple) -> Any:
    kind = arr.dtype.kind
    if kind == "b":
        return arr.tolist()
    if kind in "iu":
        return arr.tolist()
    if kind == "f" and arr.dtype == np.float64:
        flat = arr.ravel()
        if not np.all(np.isfinite(flat)):
            bad = int(np.flatnonzero(~np.isfinite(flat))[0])
            idx = np.unravel_index(bad, arr.shape)
            _float_value(float(flat[bad]), where + tuple(int(i) for i in idx))
        return arr.tolist()
    if kind == "f" or _is_ml_float(arr.dtype):
        if arr.ndim == 0:
            return _low_precision_float(arr[()], where)
        return [_array_to_list(arr[i], where + (i,)) for i in range(arr.shape[0])]
    if kind in "US":
        return arr.tolist()
    raise TypeError(
        f"cannot write an array of dtype {arr.dtype} at {_path_str(where)} to JSON; "
        "accepted: bool, integer and floating arrays"
    )


def _is_ml_float(dtype: np.dtype) -> bool:
    """True for the ml_dtypes floating formats (bfloat16, float8_*), which numpy sees as 'V'."""
    return dtype.kind == "V" and dtype.names is None and "float" in dtype.name


def to_jsonable(obj: Any, _where: tuple = ()) -> Any:
    """Convert ``obj`` to plain JSON types (dict, list, str, int, float, bool, None).

    See the module docstring for the conversions and the NaN policy.

    Raises:
        ValueError: a NaN or infinity, or two keys of one mapping that become the same string;
            the message names the key path.
        TypeError: a value or key of an unsupported type; the message names the key path.

    Example:
        >>> to_jsonable({"bits": np.int32(4), "jaccard": np.float32(0.1), "t": (1, 2)})
        {'bits': 4, 'jaccard': 0.1, 't': [1, 2]}
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return _float_value(float(obj), _where)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating) and obj.dtype == np.float64:
        return _float_value(float(obj), _where)
    if isinstance(obj, np.generic):
        return _array_to_list(np.asarray(obj), _where)
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            if isinstance(k, str):
                key = k
            elif isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_)):
                key = str(int(k))
            else:
                raise TypeError(
                    f"cannot write the key {k!r} ({type(k).__name__}) at {_path_str(_where)} to "
                    "JSON; accepted keys: str and integers"
                )
            if key in out:
                raise ValueError(
                    f"two keys at {_path_str(_where)} both become {key!r} in JSON "
                    "(an int and a str key with the same digits)"
                )
            out[key] = to_jsonable(v, _where + (key,))
        return out
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, _where + (i,)) for i, v in enumerate(obj)]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: to_jsonable(getattr(obj, f.name), _where + (f.name,))
            for f in dataclasses.fields(obj)
        }
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, np.ndarray) or hasattr(obj, "__array__"):
        arr = np.asarray(obj)
        if arr.dtype == object:
            raise TypeError(
                f"cannot write an object array at {_path_str(_where)} to JSON; "
                "accepted: bool, integer and floating arrays"
            )
        if arr.ndim == 0 and arr.dtype.kind in "biu":
            return arr.item()
        return _array_to_list(arr, _where)
    raise TypeError(
        f"cannot write a value of type {type(obj).__name__} at {_path_str(_where)} to JSON; "
        "accepted: dict, list, tuple, str, int, float, bool, None, numpy/JAX arrays and "
        "scalars, dataclasses, paths"
    )


def json_dumps(obj: Any) -> str:
    """The exact text ``write_json`` writes: sorted keys, 2-space indent, trailing newline.

    Example:
        >>> json_dumps({"b": 1, "a": np.float32(0.25)})
        '{\\n  "a": 0.25,\\n  "b": 1\\n}\\n'
    """
    return (
        json.dumps(to_jsonable(obj), sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)
        + "\n"
    )


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Serialise ``obj`` (see :func:`to_jsonable`) and write it atomically to ``path``.

    The whole text is built before anything touches the disk, so a value that cannot be
    serialised raises before the old file is replaced.

    Raises:
        ValueError / TypeError: from :func:`to_jsonable` (NaN, inf, unsupported types).
        OutputError: the file cannot be written.

    Example:
        >>> write_json("/tmp/bq_jax_doc_results.json", {"bits": 8, "flip_rate": 0.0})
    """
    atomic_write(path, json_dumps(obj))


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not accepted in results JSON (NaN and infinity are refused)")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file written by :func:`write_json` (integer keys come back as ``str``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not valid JSON or contains NaN/Infinity; names the path.

    Example:
        >>> write_json("/tmp/bq_jax_doc_rt.json", {"a": [1, 2.5]})
        >>> read_json("/tmp/bq_jax_doc_rt.json")
        {'a': [1, 2.5]}
    """
    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except ValueError as e:
        raise ValueError(f"{path!r} is not valid results JSON: {e}") from e


# ---------------------------------------------------------------------------- figures


def save_figure(fig, path: str | os.PathLike, *, dpi: int = FIGURE_DPI) -> None:
    """Render a matplotlib ``Figure`` to PNG and write it atomically to ``path``.

    The PNG carries no ``Software`` (matplotlib version) text chunk and no timestamp, so the
    same figure gives byte-identical files. The figure is rendered in memory with the Agg
    canvas; no pyplot state is used.

    Args:
        fig: a ``matplotlib.figure.Figure``.
        path: destination; must end in ``.png``.
        dpi: resolution in dots per inch (default :data:`FIGURE_DPI`).

    Raises:
        ValueError: ``path`` does not end in ``.png`` or ``dpi`` is not positive.
        OutputError: the file cannot be written.

    Example:
        >>> from matplotlib.figure import Figure
        >>> fig = Figure(figsize=(2, 2)); _ = fig.add_subplot().plot([0, 1])
        >>> save_figure(fig, "/tmp/bq_jax_doc_figure.png")
    """
    path = os.fspath(path)
    if not path.lower().endswith(".png"):
        raise ValueError(f"save_figure writes PNG only; path must end in '.png', got {path!r}")
    if not (isinstance(dpi, int) and dpi > 0):
        raise ValueError(f"dpi must be a positive int, got {dpi!r}")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    atomic_write(path, buf.getvalue())
