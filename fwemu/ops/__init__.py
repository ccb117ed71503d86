"""Troubleshooting a running fwemu: its control socket, flow and event queries, forced expiry,
policy reload and Prometheus metrics."""
