"""The provisioning scripts, run for real in a scratch copy of this machine (in_scratch_root) with
the repository synced at /vagrant as in the VMs: what each one installs and starts, that a second
run changes and restarts nothing, and that the units it installs pass systemd's checks."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from tests.e2e.conftest import require_root

from .helpers import VAGRANT, Step, in_scratch_root

FW_FILES = {
    "/etc/fwemu/fwemu.env",
    "/etc/systemd/system/fwemu.service",
    "/etc/sysctl.d/60-fwemu-lab.conf",
    "/usr/local/bin/fwemu",
}


@pytest.fixture(autouse=True)
def needs_root() -> None:
    require_root()


def provision_fw(policy: str, run_args: str = "") -> str:
    env = f"FWEMU_POLICY={shlex.quote(policy)} FWEMU_RUN_ARGS={shlex.quote(run_args)}"
    return f"{env} bash /vagrant/vagrant/provision-fw.sh"


def verify(*units: str) -> str:
    return "systemd-analyze verify " + " ".join(f"/etc/systemd/system/{u}" for u in units)


def unit_text(name: str) -> str:
    return (VAGRANT / "units" / name).read_text()


def succeeded(step: Step) -> Step:
    assert step.rc == 0, step.stderr
    return step


@pytest.fixture(scope="module")
def fw_twice(tmp_path_factory: pytest.TempPathFactory) -> list[Step]:
    """fw provisioned twice with the same settings, then its unit verified."""
    require_root()
    command = provision_fw("aws-nlb", "--speed 60")
    return in_scratch_root(tmp_path_factory.mktemp("fw"), command, command, verify("fwemu.service"))


def test_fw_gets_forwarding_fwemu_and_its_service_running_the_policy(
    fw_twice: list[Step],
) -> None:
    first = succeeded(fw_twice[0])
    assert set(first.files) == FW_FILES
    assert first.files["/etc/systemd/system/fwemu.service"] == unit_text("fwemu.service")
    assert "FWEMU_ARGS=--preset aws-nlb --speed 60" in first.files["/etc/fwemu/fwemu.env"]
    sysctl = first.files["/etc/sysctl.d/60-fwemu-lab.conf"].splitlines()
    assert {"net.ipv4.ip_forward = 1", "net.ipv6.conf.all.forwarding = 1"} <= set(sysctl)
    assert first.files["/usr/local/bin/fwemu"] == "-> /vagrant/.venv/bin/fwemu"
    assert first.calls == (
        "setup.sh --runtime",
        "sysctl -q -p /etc/sysctl.d/60-fwemu-lab.conf",
        "systemctl daemon-reload",
        "systemctl enable --quiet fwemu.service",
        "systemctl restart fwemu.service",
    )


def test_fw_provisioned_again_changes_nothing_and_restarts_nothing(
    fw_twice: list[Step],
) -> None:
    first, second = fw_twice[0], succeeded(fw_twice[1])
    assert second.files == first.files
    assert second.calls == (
        "setup.sh --runtime",
        "sysctl -q -p /etc/sysctl.d/60-fwemu-lab.conf",
        "systemctl enable --quiet fwemu.service",
        "systemctl start fwemu.service",
    )


def test_the_installed_fwemu_unit_passes_systemd_analyze_verify(fw_twice: list[Step]) -> None:
    verified = fw_twice[2]
    assert (verified.rc, verified.stderr) == (0, "")


def test_a_new_policy_file_rewrites_the_settings_and_restarts_fwemu(tmp_path: Path) -> None:
    policy = "/vagrant/policies/azure-lb.toml"
    _, changed = in_scratch_root(tmp_path, provision_fw("aws-nlb"), provision_fw(policy))
    assert f"FWEMU_ARGS=--policy {policy}\n" in succeeded(changed).files["/etc/fwemu/fwemu.env"]
    assert changed.calls[-1] == "systemctl restart fwemu.service"


def test_a_bad_policy_stops_provisioning_before_the_service_is_touched(tmp_path: Path) -> None:
    (refused,) = in_scratch_root(tmp_path, provision_fw("aws-nbl"))
    assert refused.rc == 2
    assert "fwemu: no policy file or preset named 'aws-nbl' (did you mean 'aws-nlb'?)" in (
        refused.stderr
    )
    assert set(refused.files) == {"/usr/local/bin/fwemu"}
    assert refused.calls == ("setup.sh --runtime",)


def test_server_gets_its_services_once(tmp_path: Path) -> None:
    # The packaged redis.conf, which apt (a stand-in here) would have installed.
    command = (
        "{ [ -e /etc/redis/redis.conf ] || install -D /dev/stdin /etc/redis/redis.conf"
        " <<<'bind 127.0.0.1'; } && bash /vagrant/vagrant/provision-server.sh"
    )
    units = ("lab-http.service", "lab-iperf3.service")
    first, second, verified = in_scratch_root(tmp_path, command, command, verify(*units))
    succeeded(first)
    for unit in units:
        assert first.files[f"/etc/systemd/system/{unit}"] == unit_text(unit)
        assert f"systemctl restart {unit}" in first.calls
    assert first.files["/etc/redis/redis.conf"] == (
        "bind 127.0.0.1\ninclude /etc/redis/fwemu-lab.conf\n"
    )
    assert "bind * -::*" in first.files["/etc/redis/fwemu-lab.conf"]
    assert first.files["/srv/lab/64M"] == f"<{64 << 20} bytes>"
    assert "systemctl restart redis-server.service" in first.calls
    assert (
        "apt-get install -y -qq --no-install-recommends"
        " curl redis-server iperf3 tcpdump python3" in first.calls
    )
    assert succeeded(second).files == first.files
    assert not [call for call in second.calls if "restart" in call or "daemon-reload" in call]
    assert (verified.rc, verified.stderr) == (0, "")


def test_client_gets_its_tools_and_the_route_through_fw(tmp_path: Path) -> None:
    # eth1 as Vagrant configures it on the client VM, in the scratch root's own network namespace.
    command = (
        "{ ip link show eth1 >/dev/null 2>&1 || { ip link add eth1 type veth peer name eth1-peer"
        " && ip link set eth1-peer up && ip address add 192.168.61.10/24 dev eth1"
        " && ip link set eth1 up; }; }"
        " && bash /vagrant/vagrant/provision-client.sh"
        " && LAB_HOSTS='fw=192.168.61.2 server=192.168.62.10'"
        " LAB_ROUTE='192.168.62.0/24 192.168.61.2' bash /vagrant/vagrant/lab-net.sh"
        " && ip -4 route show 192.168.62.0/24"
    )
    first, second = in_scratch_root(tmp_path, command, command)
    for step in (first, second):
        assert succeeded(step).stdout == "192.168.62.0/24 via 192.168.61.2 dev eth1 \n"
        assert step.calls == (
            "apt-get update -qq",
            "apt-get install -y -qq --no-install-recommends"
            " curl redis-tools iperf3 tcpdump python3",
        )
    hosts = first.files["/etc/hosts"].splitlines()
    assert "192.168.61.2 fw # fwemu-lab" in hosts
    assert "192.168.62.10 server # fwemu-lab" in hosts
    assert second.files == first.files


def test_the_service_command_line_runs_fwemu_and_sigterm_stops_it_cleanly(
    tmp_path: Path,
) -> None:
    # What systemd does with fwemu.service, by hand: its directories, its ExecStart with
    # $FWEMU_ARGS split at whitespace, then KillSignal; in the scratch root's network namespace.
    unit = unit_text("fwemu.service").replace("\\\n", " ")
    (exec_start,) = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    command = exec_start.removeprefix("ExecStart=").replace("$FWEMU_ARGS", "$args")
    start_stop = f"""
        mkdir -p /run/fwemu /var/log/fwemu
        args=$(sed -n 's/^FWEMU_ARGS=//p' /etc/fwemu/fwemu.env)
        {command} & pid=$!
        # Ready once the jump is in FORWARD: fwemu adds it after its chain, last.
        for _ in $(seq 600); do
            iptables -S FORWARD | grep -q -- '-j FWEMU-Q0' && break; sleep 0.1
        done
        iptables -S FORWARD
        kill -TERM $pid && wait $pid && iptables -S FORWARD
    """
    _, ran = in_scratch_root(tmp_path, provision_fw("linux", "--speed 60"), start_stop)
    assert ran.rc == 0, ran.stderr
    running, stopped = ran.stdout.split("-P FORWARD ACCEPT\n")[1:]
    assert "-j FWEMU-Q0" in running
    assert stopped == ""
