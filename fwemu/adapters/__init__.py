"""The edges around the sans-IO core: everything that touches the kernel, the clock or stdout.

iptables (the FORWARD -> NFQUEUE rules), nfqueue (binding and queue flags), inject (raw-socket
RSTs), output (clock mapping, log lines, JSON-lines events), host (root, namespaces) and daemon
(the single-threaded event loop `fwemu run` drives).
"""
