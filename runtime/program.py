"""The `.farc` tile-program container (docs/tile-program.md): a stored zip of manifest.json
and arrays/<name>.npy, written atomically and validated in full on load.

Loading is safe for files from strangers: no pickle (`allow_pickle=False`), member sizes are
bounded by the manifest before reading, every array is checked against its sha256, dtype
and shape, and then the whole program is validated (runtime/validate.py)."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from farc.atomic import atomic_write
from farc.errors import ProgramError

from .isa import FORMAT, VERSION
from .validate import ARRAY_DTYPES, ARRAY_NAME, check_header, validate_program

MANIFEST = "manifest.json"
NPY_HEADER_SLACK = 4096  # an .npy header is at most a few hundred bytes


def array_entry(arr: np.ndarray) -> dict[str, Any]:
    """The manifest's record of one array: dtype, shape and sha256 of its .npy bytes."""
    return {"dtype": str(arr.dtype), "shape": list(arr.shape),
            "sha256": hashlib.sha256(_npy_bytes(arr)).hexdigest()}


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


class Program:
    """A tile program: a JSON-able manifest plus named numpy arrays.

    Construct it from a manifest (without or with an `arrays` table; it is recomputed) and the
    arrays; `validate()` checks it, `save()` writes it, `Program.load()` reads and checks it.
    """

    def __init__(self, manifest: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.manifest = copy.deepcopy(manifest)
        self.manifest.setdefault("format", FORMAT)
        self.manifest.setdefault("version", VERSION)
        self.manifest.setdefault("constants", {})
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        if "arrays" not in self.manifest:
            self.manifest["arrays"] = {k: array_entry(v) for k, v in self.arrays.items()}
        self.validated = False
        """Set by a successful validate(); edit manifest/arrays only before validating."""

    # ---- views
    @property
    def layers(self) -> list[dict[str, Any]]:
        return self.manifest["layers"]

    @property
    def instructions(self) -> list[dict[str, Any]]:
        return self.manifest["instructions"]

    @property
    def inputs(self) -> list[dict[str, Any]]:
        return self.manifest["inputs"]

    @property
    def outputs(self) -> list[dict[str, Any]]:
        return self.manifest["outputs"]

    def constant(self, name: str) -> np.ndarray:
        return self.arrays[self.manifest["constants"][name]]

    def validate(self) -> None:
        """Raise ProgramError unless the program satisfies docs/tile-program.md."""
        validate_program(self.manifest, self.arrays)
        self.validated = True

    # ---- I/O
    def save(self, path: str | Path) -> Path:
        """Validate, then write to a temporary file in the same folder and rename it over
        `path`, so readers never see a half-written program."""
        path = Path(path)
        blobs = {k: _npy_bytes(v) for k, v in self.arrays.items()}
        self.manifest["arrays"] = {
            k: {"dtype": str(v.dtype), "shape": list(v.shape),
                "sha256": hashlib.sha256(blobs[k]).hexdigest()} for k, v in self.arrays.items()}
        self.validate()
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED) as zf:
                    zf.writestr(MANIFEST, json.dumps(self.manifest, indent=1, sort_keys=True))
                    for name, blob in blobs.items():
                        zf.writestr(f"arrays/{name}.npy", blob)
                fh.flush()
                os.fsync(fh.fileno())

        atomic_write(path, write)  # torch-free: stdlib and farc.errors only
        return path

    @classmethod
    def load(cls, path: str | Path) -> Program:
        """Read and fully validate a .farc file; any problem is one ProgramError line."""
        path = Path(path)
        if not path.is_file():
            raise ProgramError(f"{path}: no such program file")
        try:
            with zipfile.ZipFile(path) as zf:
                manifest = _read_manifest(zf, path)
                arrays = _read_arrays(zf, manifest, path)
        except ProgramError:
            raise
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
            raise ProgramError(f"{path}: corrupt or truncated program ({exc})") from None
        program = cls(manifest, arrays)
        try:
            program.validate()
        except ProgramError as exc:
            raise ProgramError(f"{path}: {exc}") from None
        return program


def _read_manifest(zf: zipfile.ZipFile, path: Path) -> dict[str, Any]:
    try:
        raw = zf.read(MANIFEST)
    except KeyError:
        raise ProgramError(f"{path}: not a farc tile program (no {MANIFEST})") from None
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProgramError(f"{path}: {MANIFEST} is not valid JSON ({exc})") from None
    try:
        check_header(manifest)
    except ProgramError as exc:
        raise ProgramError(f"{path}: {exc}") from None
    return manifest


def _read_arrays(zf: zipfile.ZipFile, manifest: dict, path: Path) -> dict[str, np.ndarray]:
    table = manifest.get("arrays")
    if not isinstance(table, dict):
        raise ProgramError(f"{path}: manifest has no 'arrays' table")
    expected = {f"arrays/{name}.npy": name for name in table}
    members = {i.filename: i for i in zf.infolist()}
    for member in members:
        if member != MANIFEST and member not in expected:
            raise ProgramError(f"{path}: unexpected member {member!r} not listed in the "
                               "manifest")
    arrays = {}
    for member, name in expected.items():
        entry = table[name]
        if not ARRAY_NAME.match(name) or not isinstance(entry, dict):
            raise ProgramError(f"{path}: bad array entry {name!r}")
        if member not in members:
            raise ProgramError(f"{path}: array {name!r} is listed but missing from the file")
        arrays[name] = _read_array(zf, members[member], name, entry, path)
    return arrays


def _read_array(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, entry: dict,
                path: Path) -> np.ndarray:
    if entry.get("dtype") not in ARRAY_DTYPES:
        raise ProgramError(f"{path}: array {name!r}: dtype {entry.get('dtype')!r} not allowed "
                           f"({', '.join(ARRAY_DTYPES)})")
    try:
        dtype = np.dtype(entry.get("dtype"))
        nbytes = dtype.itemsize * int(np.prod(entry.get("shape"), dtype=np.int64))
    except (TypeError, ValueError):
        raise ProgramError(f"{path}: array {name!r}: bad dtype/shape in manifest") from None
    if info.file_size > nbytes + NPY_HEADER_SLACK:
        raise ProgramError(f"{path}: array {name!r} is {info.file_size} bytes, manifest "
                           f"allows {nbytes} (+ header)")
    blob = zf.read(info)
    digest = hashlib.sha256(blob).hexdigest()
    if digest != entry.get("sha256"):
        raise ProgramError(f"{path}: array {name!r} fails its sha256 check (file altered "
                           "or corrupt)")
    arr = np.load(io.BytesIO(blob), allow_pickle=False)
    if str(arr.dtype) != entry.get("dtype") or list(arr.shape) != entry.get("shape"):
        raise ProgramError(f"{path}: array {name!r} is {arr.dtype}{list(arr.shape)}, "
                           f"manifest says {entry.get('dtype')}{entry.get('shape')}")
    return arr
