"""The compile driver: checkpoint -> Relax -> crossbar passes -> tile program.

`compile_checkpoint(model_or_ckpt, target, options)` is the entry point (farc.compiler.driver);
import it lazily so that `import farc.compiler` does not pull in torch or tvm."""

from __future__ import annotations

from typing import Any

__all__ = ["CompileOptions", "compile_checkpoint"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from farc.compiler import driver

        return getattr(driver, name)
    raise AttributeError(name)
