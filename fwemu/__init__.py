"""fwemu: a firewall conntrack-timeout emulator and policy tester."""

__version__ = "0.1.0"
