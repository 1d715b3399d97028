"""The `.farc` tile-program container (docs/tile-program.md): a stored zip of manifest.json
and arrays/<name>.npy, written atomically and validated in full on load.

Loading is safe for files from strangers: no pickle (`allow_pickle=False`); before anything is
read, every member must be stored (not compressed) and lie inside the file, the manifest is
bounded in bytes and nesting depth (farc/limits.py), and each array's declared size and their
sum are checked against the memory budget; every array is then checked against its sha256,
dtype and shape, NaN/Infinity literals are refused, and the whole program is validated
(runtime/validate.py)."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from farc.atomic import atomic_write
from farc.errors import ProgramError
from farc.limits import MAX_JSON_DEPTH, MAX_MANIFEST_BYTES, check_memory, fmt_bytes, json_depth
from farc.npyio import load_blob, read_blob

from .isa import FORMAT, VERSION
from .schema import DeviceSection
from .validate import ARRAY_DTYPES, ARRAY_NAME, check_header, device_of, validate_program

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

    @property
    def device(self) -> DeviceSection | None:
        """The device model the program's target records ([device]: the fields that differ
        from the ideal chip), or None for the ideal chip. Checked by validate()."""
        return device_of(self.manifest)

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
                _check_members(zf, path)
                manifest = _read_manifest(zf, path)
                arrays = _read_arrays(zf, manifest, path)
        except ProgramError:
            raise
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError,
                NotImplementedError) as exc:
            raise ProgramError(f"{path}: corrupt or truncated program ({exc})") from None
        program = cls(manifest, arrays)
        try:
            program.validate()
        except ProgramError as exc:
            raise ProgramError(f"{path}: {exc}") from None
        return program


def batch_axis(spec: dict[str, Any]) -> int:
    """Which axis of the user's array holds the batch for this input/output spec: the
    program's registers are batch-first, a time-major model's input [T, B, F] is not
    (`batch_axis` 1). Programs written before the field existed have it on axis 0."""
    return int(spec.get("batch_axis", 0))


def user_shape(spec: dict[str, Any]) -> list[Any]:
    """The spec's shape in the user's layout (None for the batch): [None, T, F] with batch
    axis 1 -> [T, None, F]."""
    shape = list(spec["shape"])
    return [*shape[1:batch_axis(spec) + 1], None, *shape[batch_axis(spec) + 1:]]


def to_batch_first(x: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """A user's array (batch at `batch_axis`) as the program's batch-first register."""
    k = batch_axis(spec)
    return x if k == 0 else np.ascontiguousarray(np.moveaxis(x, k, 0))


def from_batch_first(y: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """A batch-first register as the user's array (batch back at `batch_axis`)."""
    k = batch_axis(spec)
    return y if k == 0 else np.ascontiguousarray(np.moveaxis(y, 0, k))


def _check_members(zf: zipfile.ZipFile, path: Path) -> None:
    """Before reading anything: the format stores members uncompressed, so each member's
    size is its size in the file, and all of them together fit in the file (a zip bomb, a
    member declaring gigabytes in a small file, is refused here, not found out by reading)."""
    infos = zf.infolist()
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise ProgramError(f"{path}: member {info.filename!r} is compressed; a .farc "
                               "stores its members uncompressed (docs/tile-program.md)")
    total, size = sum(i.file_size for i in infos), path.stat().st_size
    if total > size:
        raise ProgramError(f"{path}: members declare {fmt_bytes(total)} in a file of "
                           f"{fmt_bytes(size)} (corrupt or forged sizes)")


def _read_manifest(zf: zipfile.ZipFile, path: Path) -> dict[str, Any]:
    try:
        info = zf.getinfo(MANIFEST)
    except KeyError:
        raise ProgramError(f"{path}: not a farc tile program (no {MANIFEST})") from None
    if info.file_size > MAX_MANIFEST_BYTES:
        raise ProgramError(f"{path}: {MANIFEST} is {fmt_bytes(info.file_size)}, over the "
                           f"limit of {fmt_bytes(MAX_MANIFEST_BYTES)}")
    raw = zf.read(info)
    depth = json_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise ProgramError(f"{path}: {MANIFEST} nests {depth} levels deep, over the limit of "
                           f"{MAX_JSON_DEPTH}")
    try:
        manifest = json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProgramError(f"{path}: {MANIFEST} is not valid JSON ({exc})") from None
    except ValueError as exc:  # NaN/Infinity, an overflowing float, a huge integer
        raise ProgramError(f"{path}: {MANIFEST}: {exc}") from None
    try:
        check_header(manifest)
    except ProgramError as exc:
        raise ProgramError(f"{path}: {exc}") from None
    return manifest


def _no_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name} (programs hold finite values only)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not np.isfinite(value):
        raise ValueError(f"number {text[:40]} overflows to {value} (programs hold finite "
                         "values only)")
    return value


def _read_arrays(zf: zipfile.ZipFile, manifest: dict, path: Path) -> dict[str, np.ndarray]:
    table = manifest.get("arrays")
    if not isinstance(table, dict):
        raise ProgramError(f"{path}: manifest has no 'arrays' table")
    sizes = {name: _declared_bytes(entry, name, path) for name, entry in table.items()}
    check_memory(sum(sizes.values()), f"{path}: the program's arrays", ProgramError)
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
        arrays[name] = _read_array(zf, members[member], name, entry, sizes[name], path)
    return arrays


def _declared_bytes(entry: Any, name: str, path: Path) -> int:
    """An array's size from its manifest entry alone (exact integers: no overflow)."""
    if not isinstance(entry, dict):
        raise ProgramError(f"{path}: bad array entry {name!r}")
    if entry.get("dtype") not in ARRAY_DTYPES:
        raise ProgramError(f"{path}: array {name!r}: dtype {entry.get('dtype')!r} not allowed "
                           f"({', '.join(ARRAY_DTYPES)})")
    shape = entry.get("shape")
    if not isinstance(shape, list) or any(type(d) is not int or d < 0 for d in shape) \
            or len(shape) > 32:
        raise ProgramError(f"{path}: array {name!r}: bad shape {str(shape)[:80]} in manifest")
    nbytes = np.dtype(entry["dtype"]).itemsize * math.prod(shape)
    check_memory(nbytes, f"{path}: array {name!r} {entry['dtype']}{shape}", ProgramError)
    return nbytes


def _read_array(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, entry: dict,
                nbytes: int, path: Path) -> np.ndarray:
    if info.file_size > nbytes + NPY_HEADER_SLACK:
        raise ProgramError(f"{path}: array {name!r} is {info.file_size} bytes, manifest "
                           f"allows {nbytes} (+ header)")
    blob = zf.read(info)
    digest = hashlib.sha256(blob).hexdigest()
    if digest != entry.get("sha256"):
        raise ProgramError(f"{path}: array {name!r} fails its sha256 check (file altered "
                           "or corrupt)")
    where = f"{path}: array {name!r}"
    dtype, shape, fh = read_blob(blob, where, ProgramError)  # header first: no allocation
    if str(dtype) != entry.get("dtype") or list(shape) != entry.get("shape"):
        raise ProgramError(f"{where} is {dtype}{list(shape)}, manifest says "
                           f"{entry.get('dtype')}{entry.get('shape')}")
    return load_blob(fh, where, ProgramError)
