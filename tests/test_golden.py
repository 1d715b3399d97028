"""Behaviour pinned across refactors: every golden program (tests/golden/programs.py)
still gives the same emulator outputs bit for bit, the same counters and the same costs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.golden import programs as golden

pytestmark = pytest.mark.tvm


@pytest.fixture(scope="module")
def far():
    return golden.model()


@pytest.fixture(scope="module")
def pinned():
    outs = np.load(golden.HERE / "outputs.npz")
    return {k: outs[k] for k in outs.files}, json.loads((golden.HERE / "facts.json").read_text())


@pytest.mark.parametrize("name", list(golden.CASES))
def test_program_behaviour_is_unchanged(name, far, pinned):
    program, target = golden.build(name, far)
    out, facts = golden.observe(name, program, target)
    np.testing.assert_array_equal(out, pinned[0][name])
    want = pinned[1][name]
    for key in want:
        assert facts[key] == want[key], f"{name}: {key} changed"
