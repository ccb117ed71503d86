"""The network-namespace lab: client <-> fw <-> server namespaces to run fwemu between.

`plan` describes a lab as data (names, addresses, routes, sysctls); `netns` applies, inspects
and removes it with pyroute2, and runs commands or opens sockets inside it.
"""

from fwemu.lab.netns import (
    LabInfo,
    Process,
    Stopped,
    call_in_netns,
    down,
    exec_in,
    lab,
    list_labs,
    processes_in,
    reap_orphans,
    replace_with,
    require_root,
    run_in,
    socket_in,
    stop_processes,
    up,
    up_index,
)
from fwemu.lab.plan import (
    DEFAULT_INDEX,
    DEFAULT_NAME,
    SIDES,
    Endpoint,
    LabError,
    LabPlan,
    Side,
    namespace_name,
)

__all__ = [
    "DEFAULT_INDEX",
    "DEFAULT_NAME",
    "SIDES",
    "Endpoint",
    "LabError",
    "LabInfo",
    "LabPlan",
    "Process",
    "Side",
    "Stopped",
    "call_in_netns",
    "down",
    "exec_in",
    "lab",
    "list_labs",
    "namespace_name",
    "processes_in",
    "reap_orphans",
    "replace_with",
    "require_root",
    "run_in",
    "socket_in",
    "stop_processes",
    "up",
    "up_index",
]
