"""Fixtures of the cost-model tests: the isaac target and hand-built programs
(handmade_programs.py)."""

from __future__ import annotations

import pytest
from farc.targets import load_target
from handmade_programs import attention_program, far_program


@pytest.fixture(scope="session")
def isaac():
    return load_target("isaac")


@pytest.fixture(scope="session")
def far_prog(isaac):
    return far_program(isaac)


@pytest.fixture(scope="session")
def attn_prog(isaac):
    return attention_program(isaac)
