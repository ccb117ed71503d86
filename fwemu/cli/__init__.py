"""Command-line entry point: parsing and output only; each subcommand lives in its own module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fwemu import __version__
from fwemu.errors import FwemuError
from fwemu.signals import hold

# Every module `fwemu/cli/<name>_cmd.py` is the subcommand <name>: its `register(subparsers)`
# adds its parser and sets `func(args) -> int`. `ORDER` (default 50) places it in `--help`.
# Only the command being run is imported: the others pull in pyroute2, the harness, rich and the
# core, and an ops command must start in well under a second (tests/cli/test_startup.py).
_SUFFIX = "_cmd"


def command_names() -> list[str]:
    """The subcommands, found without importing them."""
    import pkgutil

    return [
        info.name[: -len(_SUFFIX)]
        for info in pkgutil.iter_modules(__path__)
        if info.name.endswith(_SUFFIX)
    ]


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv`: with its one command's subparser when argv names one, with none for
    a bare `--version`, else (help, a usage error) with all of them."""
    import importlib

    parser = argparse.ArgumentParser(
        prog="fwemu",
        description=(
            "Emulate a stateful firewall's TCP and UDP connection-tracking timeouts inline "
            "(NFQUEUE), to see what your application does when the firewall forgets or resets "
            "its connections."
        ),
        epilog="Run 'fwemu COMMAND --help' for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"fwemu {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    names = command_names()
    words = list(sys.argv[1:] if argv is None else argv)
    chosen = _chosen(words)
    if chosen in names:
        names = [chosen]
    elif chosen is None and words == ["--version"]:
        names = []
    modules = [importlib.import_module(f"{__name__}.{name}{_SUFFIX}") for name in names]
    for module in sorted(modules, key=lambda m: (getattr(m, "ORDER", 50), m.__name__)):
        module.register(subparsers)
    return parser


def _chosen(words: Sequence[str]) -> str | None:
    """The command `words` name, if any: the first that is not an option."""
    return next((word for word in words if not word.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    if _chosen(sys.argv[1:] if argv is None else argv) == "run":
        hold()  # before the imports of `run`: see fwemu/signals.py
    try:
        args = build_parser(argv).parse_args(argv)
        code: int = args.func(args)
    except FwemuError as err:
        # One problem: "fwemu: <message>". Several (a policy file's): one self-locating line each.
        message = str(err)
        print(message if "\n" in message else f"fwemu: {message}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`fwemu ... | head`): stop quietly, as Unix tools do.
        sys.stderr.close()
        return 141
    except OSError as err:
        # The last resort for an environment problem no command turned into a FwemuError: one
        # line naming it, not a traceback.
        where = f": {err.filename}" if err.filename else ""
        print(f"fwemu: {err.strerror or err}{where}", file=sys.stderr)
        return FwemuError.exit_code
    return code
