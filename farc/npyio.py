""".npy and .npz files from users, read header first (docs/bad-inputs.md).

`np.load` trusts a file's header: a header declaring 10^12 samples allocates before it finds
the data missing, an object member fails only when it is touched, a bad CRC surfaces as a
zipfile error. Here every header is parsed on its own, object dtypes are refused, and the
declared size is checked against the bytes really there and the memory budget
(farc/limits.py) before a single element is allocated; every failure is one FarcError line.
numpy and the stdlib only (the runtime reads its arrays through `read_blob`)."""

from __future__ import annotations

import io
import math
import zipfile
import zlib
from pathlib import Path
from typing import IO

import numpy as np

from farc.errors import DataError, FarcError
from farc.limits import check_memory, fmt_bytes

MAX_HEADER_BYTES = 10_000
"""Largest .npy header accepted (numpy's own default `max_header_size`)."""


def read_header(fh: IO[bytes], where: str, error: type[FarcError] = DataError
                ) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, shape, data bytes) from the header at the current position of `fh`."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(fh, max_header_size=MAX_HEADER_BYTES)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(fh, max_header_size=MAX_HEADER_BYTES)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, TypeError, SyntaxError, EOFError, OSError, zlib.error,
            zipfile.BadZipFile) as exc:
        raise error(f"{where}: not a readable .npy array ({exc})") from None
    if dtype.hasobject:
        raise error(f"{where}: holds Python objects (dtype {dtype}); only numeric arrays are "
                    "read (no pickle)")
    return dtype, tuple(shape), dtype.itemsize * math.prod(shape)


def _check_size(where: str, dtype: np.dtype, shape: tuple, nbytes: int, available: int,
                error: type[FarcError]) -> None:
    check_memory(nbytes, f"{where}: array {dtype}{list(shape)}", error)
    if nbytes > available:
        raise error(f"{where}: header declares {dtype}{list(shape)} ({fmt_bytes(nbytes)}) but "
                    f"only {fmt_bytes(available)} follow it (truncated or forged)")


def _read_array(fh: IO[bytes], where: str, error: type[FarcError]) -> np.ndarray:
    try:
        return np.lib.format.read_array(fh, allow_pickle=False,
                                        max_header_size=MAX_HEADER_BYTES)
    except (ValueError, EOFError, OSError, zlib.error, zipfile.BadZipFile) as exc:
        raise error(f"{where}: cannot read array data ({exc})") from None


def read_blob(blob: bytes, where: str, error: type[FarcError] = DataError
              ) -> tuple[np.dtype, tuple[int, ...], io.BytesIO]:
    """Header of an in-memory .npy (checked against the bytes present); returns the stream
    rewound, ready for `load_blob` once the caller has compared dtype and shape."""
    fh = io.BytesIO(blob)
    dtype, shape, nbytes = read_header(fh, where, error)
    _check_size(where, dtype, shape, nbytes, len(blob) - fh.tell(), error)
    fh.seek(0)
    return dtype, shape, fh


def load_blob(fh: io.BytesIO, where: str, error: type[FarcError] = DataError) -> np.ndarray:
    return _read_array(fh, where, error)


def load_npy(path: str | Path, what: str = "", error: type[FarcError] = DataError
             ) -> np.ndarray:
    """One .npy file, header checked first."""
    where = f"{what} {path}".strip()
    try:
        with open(path, "rb") as fh:
            dtype, shape, nbytes = read_header(fh, where, error)
            _check_size(where, dtype, shape, nbytes, Path(path).stat().st_size - fh.tell(),
                        error)
            fh.seek(0)
            return _read_array(fh, where, error)
    except OSError as exc:
        raise error(f"{where}: cannot read it ({exc.strerror or exc})") from None


def load_npz(path: str | Path, what: str = "", error: type[FarcError] = DataError
             ) -> dict[str, np.ndarray]:
    """Every member of an .npz archive (compressed or not), headers and sizes checked before
    any is read, the sum of their sizes against the memory budget, CRCs checked on read."""
    where = f"{what} {path}".strip()
    try:
        with zipfile.ZipFile(path) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            total = 0
            for info in infos:
                if not info.filename.endswith(".npy"):
                    raise error(f"{where}: member {info.filename!r} is not an .npy array")
                with zf.open(info) as fh:
                    dtype, shape, nbytes = read_header(fh, f"{where}[{info.filename}]", error)
                    _check_size(f"{where}[{info.filename}]", dtype, shape, nbytes,
                                info.file_size - fh.tell(), error)
                total += nbytes
            check_memory(total, f"{where}: its {len(infos)} arrays together", error)
            out = {}
            for info in infos:
                with zf.open(info) as fh:
                    out[info.filename[:-4]] = _read_array(fh, f"{where}[{info.filename}]",
                                                          error)
            return out
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError) as exc:
        raise error(f"{where}: corrupt .npz archive ({exc})") from None
    except OSError as exc:
        raise error(f"{where}: cannot read it ({exc.strerror or exc})") from None


def load_arrays(path: str | Path, what: str = "", error: type[FarcError] = DataError
                ) -> np.ndarray | dict[str, np.ndarray]:
    """An .npy (one array) or an .npz (dict by member name), chosen by the file's magic."""
    where = f"{what} {path}".strip()
    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
    except OSError as exc:
        raise error(f"{where}: cannot read it ({exc.strerror or exc})") from None
    if magic.startswith(b"PK"):
        return load_npz(path, what, error)
    if magic == b"\x93NUMPY":
        return load_npy(path, what, error)
    raise error(f"{where}: not an .npy or .npz file")
