"""The scripts of deploy/image/, loaded as modules for the tests that check them.

They are not a package: each runs on its own inside a Docker build, with nothing of the
project importable beside it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def load(name: str) -> ModuleType:
    """deploy/image/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "deploy/image" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
