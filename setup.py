"""fwemu's build: pyproject.toml configures the package; this compiles fwemu/core with mypyc
when it can, as mypy and black ship themselves.

The .py files stay installed and are the fallback: FWEMU_PURE=1 skips the compile (and retires a
compiled build left in this checkout), and a compile that fails (no C compiler, no Python
headers) leaves fwemu pure, with a warning. The C is generated only when extensions are built
(not for metadata), and the build ends by stamping the digest of the sources it compiled:
fwemu/core/compiled.py runs the compiled modules only while that digest still matches.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
# Left pure: engine.py, whose Engine tests subclass and patch (a compiled class refuses both), and
# events.py, whose dataclasses mypyc builds wrongly (a subclass's fields after the base's
# ClassVar defaults). Both are thin there: one facade call per packet, events only on changes.
PURE = {"__init__.py", "compiled.py", "engine.py", "events.py"}


def _compiled() -> ModuleType:
    """fwemu/core/compiled.py, loaded alone: its names and digest (importing fwemu.core would
    import the package, which a build must not need)."""
    spec = importlib.util.spec_from_file_location(
        "_fwemu_compiled", ROOT / "fwemu/core/compiled.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compiled = _compiled()


class MypycBuild(build_ext):
    """build_ext for the compiled core: mypyc's C is generated here, not when setup.py is read
    (pip reads it three times an install), and a failure anywhere leaves the package pure."""

    def finalize_options(self) -> None:
        sources = [
            str(path.relative_to(ROOT))
            for path in sorted((ROOT / "fwemu/core").glob("*.py"))
            if path.name not in PURE
        ]
        try:
            from mypyc.build import mypycify

            extensions = mypycify(sources, group_name=compiled.GROUP, target_dir="build/mypyc")
        except (Exception, SystemExit) as error:  # mypyc exits on a type error
            extensions = []
            _warn(error)
        self.distribution.ext_modules = extensions
        super().finalize_options()

    def run(self) -> None:
        if not self.extensions:
            return
        try:
            super().run()
        except Exception as error:  # no compiler, no Python headers, a compile error
            self._undo()
            _warn(error)
            return
        stamp = Path(self.get_ext_fullpath(compiled.GROUP + "__mypyc")).parent / compiled.STAMP
        stamp.write_text(compiled.digest(ROOT / "fwemu") + "\n")

    def _undo(self) -> None:
        """Remove what a failed build left, so that no part of it is ever imported."""
        inplace = self.inplace
        for where in (False, True):
            self.inplace = where
            for ext in self.extensions:
                Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
            library = Path(self.get_ext_fullpath(compiled.GROUP + "__mypyc"))
            (library.parent / compiled.STAMP).unlink(missing_ok=True)
        self.inplace, self.extensions = inplace, []


def _warn(error: BaseException) -> None:
    print(f"fwemu: fwemu/core not compiled, left pure: {error}", file=sys.stderr)


def _retire_inplace() -> None:
    """FWEMU_PURE=1: a compiled build in this checkout would be run as long as it matches."""
    core = ROOT / "fwemu/core"
    (core / compiled.STAMP).unlink(missing_ok=True)
    for library in core.glob("*.so"):
        library.unlink()


if os.environ.get("FWEMU_PURE") == "1":
    _retire_inplace()
    setup()
else:
    # A placeholder, which MypycBuild replaces with mypyc's extensions: with it, setuptools runs
    # build_ext and tags the wheel for this platform.
    setup(
        ext_modules=[Extension(compiled.GROUP + "__mypyc", sources=[])],
        cmdclass={"build_ext": MypycBuild},
    )
