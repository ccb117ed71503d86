"""Whether the core runs compiled (mypyc, built at install time by setup.py) or as its .py files.

setup.py compiles the core's modules into extension modules next to their sources, in one shared
library (GROUP), and stamps the build with the digest of the sources it compiled (STAMP). Python
imports an extension module before a .py file of the same name, so an edited checkout (an
editable install) would run its last build. `choose()`, run by the package's __init__ before any
of its modules is imported, therefore makes them import as .py files unless the stamp matches
the sources. `use_sources()` does so on purpose: tests/core/test_compiled.py and bench/core.py
run both.

Reading the core's own files while the package imports is import machinery, not I/O of the
core's: nothing here runs once the modules are loaded.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from importlib.machinery import EXTENSION_SUFFIXES, ModuleSpec
from importlib.util import spec_from_file_location
from pathlib import Path
from types import ModuleType
from typing import Final

GROUP: Final = "fwemu.core.compiled"  # the shared library is GROUP + "__mypyc"
STAMP: Final = "compiled.sha256"
_HERE: Final = Path(__file__).resolve().parent


def digest(package: Path) -> str:
    """The digest of what a build of the core compiles and reads: the core's sources and the
    policy model it imports (its types are checked at run time by the compiled code)."""
    core = package / "core"
    sha = hashlib.sha256()
    for path in (*sorted(core.glob("*.py")), package / "policy" / "model.py"):
        sha.update(f"{path.relative_to(package)}\0".encode())
        sha.update(path.read_bytes())
    return sha.hexdigest()


def built() -> bool:
    """Whether a compiled build of these very sources is installed here."""
    try:
        stamp = (_HERE / STAMP).read_text(encoding="ascii").strip()
    except OSError:
        return False
    return stamp == digest(_HERE.parent)


class _Sources:
    """A meta path finder: the core's modules as their .py files only."""

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        package, _, module = name.rpartition(".")
        source = _HERE / f"{module}.py"
        if package != __package__ or not source.is_file():
            return None
        return spec_from_file_location(name, source)


_SOURCES: Final = _Sources()


def use_sources() -> None:
    """Import the core's modules from their .py files from now on (before any is imported)."""
    if _SOURCES not in sys.meta_path:
        sys.meta_path.insert(0, _SOURCES)


def choose() -> None:
    """The compiled modules if they were built from these sources, else the .py files."""
    if not built():
        use_sources()


def running() -> bool:
    """Whether the core's modules import (or were imported) compiled."""
    module = sys.modules.get(f"{__package__}.packet")
    if module is not None:
        return not str(module.__file__).endswith(".py")
    return _SOURCES not in sys.meta_path and any(
        (_HERE / f"packet{suffix}").is_file() for suffix in EXTENSION_SUFFIXES
    )
