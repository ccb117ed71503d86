"""The VM lab booted for real, without a hypervisor: client, fw and server as systemd-nspawn
containers running Debian's own systemd (tests/vmlab/), joined as the Vagrantfile's two private
networks and provisioned by the same vagrant/provision-*.sh that `vagrant up` runs, so that
fwemu.service is started by fw's systemd. From the client: what the lab's scenario script sees;
on fw: what systemctl and journalctl do with fwemu. The lab leaves this machine as it found it.

The first run builds the Debian root (44-91 s here, 573 MB in /var/cache/fwemu/nspawn/); a run
with it cached takes about two minutes, most of it fw's install compiling the core
(docs/vagrant.md).
"""

from __future__ import annotations

import json
import re
import select
import subprocess
import time
import tomllib
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

import pytest
from packaging.requirements import Requirement

from tests.e2e.conftest import report_figures, require_root
from tests.vagrant.helpers import tool
from tests.vmlab.lab import PREFIX, Lab, LabError, Machine, nspawn_lab, reap, run_prefix
from tests.vmlab.root import CACHE, Root, RootError, cached_root

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
# A policy file of the repository, as a user would pass it: idle established connections are
# reset on both sides after 6 minutes, 6 s at --speed 60.
POLICY = "tests/vmlab/policy.toml"
SETTINGS = {"FWEMU_POLICY": POLICY, "FWEMU_RUN_ARGS": "--speed 60"}
SERVER, REDIS = "192.168.62.10", 6379  # the server's, as the Vagrantfile addresses it
# iptables -S of a filter table without rules.
NO_RULES = ["-P INPUT ACCEPT", "-P FORWARD ACCEPT", "-P OUTPUT ACCEPT"]


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    require_root()
    for name in ("systemd-nspawn", "mmdebstrap", "rsync", "ruby", "nsenter"):
        tool(name)
    reap()
    before = host_state()
    failed = ""
    try:
        with ExitStack() as stack:
            started = time.monotonic()
            root = stack.enter_context(cached_root())
            built = time.monotonic()
            booted = stack.enter_context(nspawn_lab(root.path, SETTINGS))
            serving(booted["fw"])
            up = time.monotonic() - built
            report_figures(request.config, figures(root, built - started, up, booted))
            yield booted
    except (RootError, LabError) as err:
        failed = str(err)
    if failed:
        pytest.fail(failed, pytrace=False)
    assert host_state() == before


def host_state() -> dict[str, Any]:
    """What the lab must leave as it was in this machine's own namespaces: the links, the
    iptables and ip6tables rules, the lab's machines and mounts (none)."""
    mine = (PREFIX, str(CACHE))
    return {
        "links": sorted(re.findall(r"^\d+: ([^:@]+)", _output("ip", "-o", "link"), re.M)),
        "rules": [_output("iptables", "-S"), _output("ip6tables", "-S")],
        "mounts": [
            m
            for m in Path("/proc/self/mountinfo").read_text().splitlines()
            if any(s in m for s in mine)
        ],
        "machines": sorted(
            p.name
            for p in Path("/proc").iterdir()
            if p.name.isdigit() and run_prefix().encode() in _cmdline(p)
        ),
    }


def _output(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


def figures(root: Root, waited: float, up: float, lab: Lab) -> str:
    """The root's size and build time, and how long the lab took to come up."""
    build = f"built in {root.built_in:.0f} s" if root.built_in else f"cached ({waited:.1f} s)"
    steps = ", ".join(
        f"{name} {sum(seconds for _, seconds, _ in ran):.1f} s"
        for name, ran in lab.provisioned.items()
    )
    return (
        f"nspawn lab: Debian root {root.size / 1e6:.0f} MB, {build}; three machines booted, joined "
        f"and provisioned in {up:.1f} s (provisioning: {steps})"
    )


def serving(fw: Machine, *, not_pid: str = "") -> str:
    """Wait until fwemu.service's fwemu (not `not_pid`) answers on its control socket, which it
    serves once its rules are in; its pid."""
    script = f"""
        for _ in $(seq 300); do
            pid=$(systemctl show -p MainPID --value fwemu)
            if [ "$pid" != 0 ] && [ "$pid" != "{not_pid}" ] && fwemu flows >/dev/null 2>&1; then
                echo "$pid"; exit 0
            fi
            sleep 0.1
        done
        systemctl status --no-pager fwemu; exit 1
    """
    return fw.sh(script, timeout=60).stdout.strip()


def rules(fw: Machine) -> dict[str, list[str]]:
    return {t: fw.sh(f"{t} -S").stdout.splitlines() for t in ("iptables", "ip6tables")}


def redis_flows(fw: Machine) -> list[dict[str, Any]]:
    """The flows to the server's redis that fwemu tracks."""
    found: list[dict[str, Any]] = json.loads(fw.sh("fwemu flows --json").stdout)
    return [f for f in found if (f["dst"], f["dport"]) == (SERVER, REDIS)]


class Journal:
    """fw's journal of fwemu.service from the moment it is made."""

    def __init__(self, fw: Machine) -> None:
        self.fw = fw
        shown = fw.sh("journalctl -u fwemu -n 1 --show-cursor --no-pager -o cat").stdout
        self.cursor = shown.splitlines()[-1].removeprefix("-- cursor: ")

    def lines(self) -> list[str]:
        command = f"journalctl -u fwemu --after-cursor='{self.cursor}' --no-pager -o cat"
        return self.fw.sh(command).stdout.splitlines()

    def wait_for(self, pattern: str, seconds: float = 20) -> str:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            found = [line for line in self.lines() if re.search(pattern, line)]
            if found:
                return found[0]
            time.sleep(0.2)
        pytest.fail(f"no journal line of fwemu.service matches {pattern!r}: {self.lines()}")


def first_line(stream: IO[str] | None, seconds: float) -> str:
    assert stream is not None
    if not select.select([stream], [], [], seconds)[0]:
        pytest.fail(f"nothing came within {seconds} s")
    return stream.readline().strip()


def outcome(process: subprocess.Popen[str], seconds: float = 40) -> tuple[int, str]:
    out, err = process.communicate(timeout=seconds)
    return process.returncode, out.strip() or err.strip()


@pytest.fixture(scope="module")
def one_rule_set(lab: Lab) -> dict[str, list[str]]:
    """fw's rules while fwemu.service runs, as provisioned: one chain, each rule once."""
    seen = rules(lab["fw"])
    for family in seen.values():
        assert family[:3] == NO_RULES and len(family) == len(set(family))
        assert [line for line in family if line.startswith("-N ")] == ["-N FWEMU-Q0"]
    return seen


@pytest.fixture(autouse=True)
def fwemu_running(lab: Lab) -> None:
    """fwemu.service running, whatever a test before left (a failed one may have stopped it)."""
    lab["fw"].sh("systemctl start fwemu")
    serving(lab["fw"])


def test_fw_gets_the_runtime_install_only_and_provisioning_it_again_changes_nothing(
    lab: Lab,
) -> None:
    fw = lab["fw"]
    pid = serving(fw)
    again = "".join(output for _, _, output in lab.provision("fw"))
    assert "setup: ready (.venv/bin/fwemu): nothing to install" in again
    assert serving(fw) == pid  # not restarted
    frozen = fw.sh("/vagrant/.venv/bin/python -m pip list --format=freeze").stdout.split()
    installed = {line.split("==")[0].lower() for line in frozen}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = {Requirement(r).name.lower() for r in project["optional-dependencies"]["test"]}
    assert {"fwemu", "netfilterqueue", "rich"} <= installed
    assert installed & extras == set()


def test_the_idle_scenario_sees_the_expiry_as_a_reset_and_the_journal_has_the_events(
    lab: Lab,
) -> None:
    journal = Journal(lab["fw"])
    client = lab["client"]
    short = client.spawn("bash /vagrant/vagrant/scenario-idle.sh 2")
    long = client.spawn("bash /vagrant/vagrant/scenario-idle.sh 9")
    assert outcome(short) == (0, "alive")
    assert outcome(long) == (1, "reset")
    expired = journal.wait_for(rf" expire +(\S+) > {SERVER}:{REDIS} ESTABLISHED .*: reset-both$")
    flow = expired.split()[2]
    for side in ("client", "server"):
        journal.wait_for(rf" reset +{re.escape(flow)} > {SERVER}:{REDIS} RST to {side} .*\(expire")


def test_systemctl_reload_applies_the_edited_policy_and_keeps_the_flows(lab: Lab) -> None:
    fw, client = lab["fw"], lab["client"]
    policy = fw.synced / POLICY  # where `vagrant rsync fw` would put the edited file
    original = policy.read_text()
    silent = (
        original.replace('established = "6m"', 'established = "3m"')
        .replace('established = "reset-both"', 'established = "silent"')
        .replace("pickup = true", "pickup = false")
    )
    assert silent.count("3m") == 1 and "silent" in silent and "pickup = false" in silent
    idle = client.spawn("WAIT=3 bash /vagrant/vagrant/scenario-idle.sh 9")
    try:
        assert first_line(idle.stderr, 20).startswith("connected to server:6379")
        (before,) = redis_flows(fw)
        journal = Journal(fw)
        policy.write_text(silent)
        fw.sh("systemctl reload fwemu")
        journal.wait_for(r"reloaded policy vmlab .*: 1 flow kept")
        (after,) = redis_flows(fw)
        assert (after["src"], after["sport"]) == (before["src"], before["sport"])
        assert after["age"] >= before["age"]
        assert after["expires_in"] <= 3 < before["expires_in"]
        # Expired silently under the new policy, and no pickup: the late PING meets silence.
        assert outcome(idle) == (3, "hang")
    finally:
        idle.kill()
        journal = Journal(fw)
        policy.write_text(original)
        fw.sh("systemctl reload fwemu")
        journal.wait_for(r"reloaded policy vmlab")


def test_systemctl_restart_and_stop_leave_exactly_one_rule_set_or_none(
    lab: Lab, one_rule_set: dict[str, list[str]]
) -> None:
    fw = lab["fw"]
    pid = serving(fw)
    fw.sh("systemctl restart fwemu")
    pid = serving(fw, not_pid=pid)
    assert rules(fw) == one_rule_set
    journal = Journal(fw)
    fw.sh("systemctl stop fwemu")
    assert fw.sh("systemctl is-active fwemu", check=False).stdout.strip() == "inactive"
    assert rules(fw) == {"iptables": NO_RULES, "ip6tables": NO_RULES}
    journal.wait_for(r"fwemu stopped")
    fw.sh("systemctl start fwemu")
    serving(fw, not_pid=pid)
    assert rules(fw) == one_rule_set


def test_a_killed_fwemu_is_restarted_by_systemd_while_traffic_keeps_flowing(
    lab: Lab, one_rule_set: dict[str, list[str]]
) -> None:
    fw, client = lab["fw"], lab["client"]
    pid = serving(fw)
    restarts = int(fw.sh("systemctl show -p NRestarts --value fwemu").stdout)
    journal = Journal(fw)
    # 12 s of PINGs: longer than systemd's RestartSec=2 and a new fwemu's start, even under load.
    pinger = client.spawn("python3 /vagrant/tests/vmlab/pinger.py server 6379 12")
    try:
        assert first_line(pinger.stdout, 20) == "connected"
        fw.sh(f"kill -KILL {pid}")
        serving(fw, not_pid=pid)
        assert pinger.poll() is None  # still pinging: it ran through the whole gap
        # The new fwemu picked the connection up (pickup = true) and forwards it.
        assert [f["state"] for f in redis_flows(fw)] == ["ESTABLISHED"]
        code, out = outcome(pinger)
    finally:
        pinger.kill()
    counts = json.loads(out.splitlines()[-1])
    assert code == 0 and counts["answered"] == counts["sent"] > 60, counts
    assert int(fw.sh("systemctl show -p NRestarts --value fwemu").stdout) == restarts + 1
    journal.wait_for(r"status=9/KILL")
    assert rules(fw) == one_rule_set
