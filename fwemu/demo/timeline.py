"""The demo's timeline lives in `fwemu.scenario.timeline`, shared with `fwemu test`."""

from fwemu.scenario.timeline import Entry, Notebook, Who, describe, fwemu_entries, merged

__all__ = ["Entry", "Notebook", "Who", "describe", "fwemu_entries", "merged"]
