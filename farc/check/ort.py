"""A small onnxruntime runner: the golden reference every numerical check compares against.

CPU provider only, so results do not depend on which accelerator a machine happens to have.
Thread counts are settable because the emulator, the compiler and onnxruntime often share a
couple of cores, and timing comparisons need the same thread budget on both sides."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from farc.errors import CheckpointError, DataError


class OrtRunner:
    """Run an ONNX model with one input and one output (farc's export contract)."""

    def __init__(
        self, path: str | os.PathLike, intra_op_threads: int | None = None,
        inter_op_threads: int | None = 1,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: no such ONNX file")
        opts = ort.SessionOptions()
        if intra_op_threads is not None:
            opts.intra_op_num_threads = intra_op_threads
        if inter_op_threads is not None:
            opts.inter_op_num_threads = inter_op_threads
        try:
            self.session = ort.InferenceSession(
                str(self.path), opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CheckpointError(f"{self.path}: onnxruntime cannot load it: {msg}") from None
        inp = self.session.get_inputs()[0]
        self.input_name: str = inp.name
        self.input_shape: list = list(inp.shape)
        self.output_name: str = self.session.get_outputs()[0].name

    def run(self, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Outputs for input batch `x` (cast to float32), optionally in chunks of batch_size."""
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        self._check_shape(x)
        if batch_size is None or len(x) <= batch_size:
            return self._run(x)
        return np.concatenate([self._run(x[i : i + batch_size])
                               for i in range(0, len(x), batch_size)])

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def _check_shape(self, x: np.ndarray) -> None:
        want = self.input_shape
        ok = x.ndim == len(want) and all(
            not isinstance(w, int) or w == s for w, s in zip(want, x.shape)
        )
        if not ok:
            raise DataError(
                f"input of shape {tuple(x.shape)} does not fit {self.path.name}'s "
                f"{self.input_name!r} of shape {tuple(want)}"
            )
