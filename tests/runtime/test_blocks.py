"""Blocked elementwise kernels of the emulator (issue 16): processing in cache-sized blocks
must not change a single bit."""

from __future__ import annotations

import numpy as np
from farc.runtime.emulator import GELU_BLOCK, gelu


def test_gelu_blocks_change_no_bit() -> None:
    """gelu over several blocks (sizes not multiples of the block) equals gelu applied to
    pieces smaller than one block, bit for bit, specials included."""
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(3, 2 * GELU_BLOCK + 77)) * 4).astype(np.float32)
    x[0, :6] = [np.inf, -np.inf, np.nan, 0.0, -0.0, 40.0]
    with np.errstate(all="ignore"):
        whole = gelu(x)
        pieces = np.concatenate([gelu(p) for p in np.array_split(x.reshape(-1), 97)])
    assert whole.shape == x.shape and whole.dtype == np.float32
    np.testing.assert_array_equal(whole.reshape(-1).view(np.int32), pieces.view(np.int32))
