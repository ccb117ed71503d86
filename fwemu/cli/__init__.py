"""Command-line entry point: parsing and output only; each subcommand lives in its own module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fwemu import __version__
from fwemu.errors import FwemuError

# Every module `fwemu/cli/<name>_cmd.py` is a subcommand: its `register(subparsers)` adds its
# parser and sets `func(args) -> int`. `ORDER` (default 50) places it in `--help`.


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fwemu",
        description=(
            "Emulate a stateful firewall's TCP connection-tracking timeouts inline (NFQUEUE), "
            "to see what your application does when the firewall forgets or resets its connections."
        ),
        epilog="Run 'fwemu COMMAND --help' for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"fwemu {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    import importlib
    import pkgutil

    modules = [
        importlib.import_module(f"{__name__}.{info.name}")
        for info in pkgutil.iter_modules(__path__)
        if info.name.endswith("_cmd")
    ]
    for module in sorted(modules, key=lambda m: (getattr(m, "ORDER", 50), m.__name__)):
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
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
