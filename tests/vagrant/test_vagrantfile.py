"""The Vagrantfile, evaluated for real by Ruby against a stand-in for Vagrant's configuration API
(vagrantfile_dump.rb): the lab it declares, and how it reads the environment."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .helpers import REPO, VAGRANT, run, tool

_DUMP = Path(__file__).with_name("vagrantfile_dump.rb")
# libvirt's settings for every VM besides memory and CPUs (the driver only when chosen).
HEADLESS = {"graphics_type": "none", "video_type": "none"}


def declare(**settings: str) -> dict[str, Any]:
    """What the Vagrantfile declares with these FWEMU_* settings (and no others) in the
    environment: {"global": {...}, "machines": {name: {...}}}."""
    done = run(tool("ruby"), str(_DUMP), str(VAGRANT / "Vagrantfile"), env=_env(settings))
    assert done.returncode == 0, done.stderr
    lab: dict[str, Any] = json.loads(done.stdout)
    return lab


def refusal(**settings: str) -> str:
    """The message the Vagrantfile stops with for these settings."""
    done = run(tool("ruby"), str(_DUMP), str(VAGRANT / "Vagrantfile"), env=_env(settings))
    assert done.returncode != 0, f"accepted {settings}"
    return done.stderr.strip()


def _env(settings: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FWEMU_")}
    return env | settings


def provisioner(machine: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(p for p in machine["provisioners"] if p["name"] == name)
    return found


def addresses(machine: dict[str, Any]) -> list[str]:
    return [n["ip"] for n in machine["networks"] if n["type"] == "private_network"]


def test_three_machines_with_client_and_server_routed_through_fw() -> None:
    machines = declare()["machines"]
    assert sorted(machines) == ["client", "fw", "server"]
    assert addresses(machines["fw"]) == ["192.168.61.2", "192.168.62.2"]
    assert addresses(machines["client"]) == ["192.168.61.10"]
    assert addresses(machines["server"]) == ["192.168.62.10"]
    client_net = provisioner(machines["client"], "lab-net")
    server_net = provisioner(machines["server"], "lab-net")
    assert client_net["env"]["LAB_ROUTE"] == "192.168.62.0/24 192.168.61.2"
    assert server_net["env"]["LAB_ROUTE"] == "192.168.61.0/24 192.168.62.2"
    assert client_net["env"]["LAB_HOSTS"] == "fw=192.168.61.2 server=192.168.62.10"
    assert client_net["run"] == server_net["run"] == "always"  # Vagrant's network set-up drops it


def test_the_lab_networks_are_isolated_on_both_providers() -> None:
    for machine in declare()["machines"].values():
        for network in machine["networks"]:
            side = "client" if network["ip"].startswith("192.168.61.") else "server"
            assert network["virtualbox__intnet"] == f"fwemu-{side}"
            assert network["libvirt__network_name"] == f"fwemu-{side}"
            assert network["libvirt__forward_mode"] == "none"
            assert network["netmask"] == "255.255.255.0"


def test_the_repository_is_synced_whole_without_host_builds() -> None:
    lab = declare()["global"]
    assert lab["box"] == "debian/bookworm64"
    (synced,) = [f for f in lab["synced_folders"] if not f.get("disabled")]
    assert (synced["source"], synced["destination"], synced["type"]) == (
        str(REPO),
        "/vagrant",
        "rsync",
    )
    assert {".venv/", ".git/", "vagrant/.vagrant/"} <= set(synced["rsync__exclude"])


def test_every_provisioner_runs_a_script_of_the_repository() -> None:
    for machine in declare()["machines"].values():
        for p in machine["provisioners"]:
            command, script = p["inline"].split()
            assert command == "bash"
            assert (REPO / script.removeprefix("/vagrant/")).is_file(), script


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        (None, "linux"),
        ("aws-nlb", "aws-nlb"),
        ("policies/azure-lb.toml", "/vagrant/policies/azure-lb.toml"),
        (str(REPO / "fwemu/presets/pf.toml"), "/vagrant/fwemu/presets/pf.toml"),
    ],
)
def test_fw_runs_the_policy_named_by_FWEMU_POLICY(setting: str | None, expected: str) -> None:
    settings = {"FWEMU_RUN_ARGS": "--speed 60"} | ({"FWEMU_POLICY": setting} if setting else {})
    fwemu = provisioner(declare(**settings)["machines"]["fw"], "fwemu")
    assert fwemu["env"] == {"FWEMU_POLICY": expected, "FWEMU_RUN_ARGS": "--speed 60"}


def test_memory_cpus_box_and_networks_can_be_changed() -> None:
    lab = declare(
        FWEMU_VM_MEMORY="2048",
        FWEMU_VM_CPUS="2",
        FWEMU_BOX="generic/debian12",
        FWEMU_CLIENT_NET="10.61.0.0/16",
        FWEMU_SERVER_NET="172.30.5.0/28",
    )
    assert lab["global"]["box"] == "generic/debian12"
    for machine in lab["machines"].values():
        assert machine["providers"]["virtualbox"] == {"memory": 2048, "cpus": 2}
        assert machine["providers"]["libvirt"] == HEADLESS | {"memory": 2048, "cpus": 2}
    assert addresses(lab["machines"]["fw"]) == ["10.61.0.2", "172.30.5.2"]
    client_net = provisioner(lab["machines"]["client"], "lab-net")
    assert client_net["env"]["LAB_ROUTE"] == "172.30.5.0/28 10.61.0.2"
    assert lab["machines"]["server"]["networks"][0]["netmask"] == "255.255.255.240"


def test_modest_default_resources_and_no_display() -> None:
    machines = declare()["machines"]
    assert machines["fw"]["providers"]["libvirt"] == HEADLESS | {"memory": 1024, "cpus": 1}
    assert machines["client"]["providers"]["virtualbox"] == {"memory": 512, "cpus": 1}


@pytest.mark.parametrize("driver", ["kvm", "qemu"])
def test_libvirts_driver_can_be_chosen(driver: str) -> None:
    for machine in declare(FWEMU_VM_DRIVER=driver)["machines"].values():
        assert machine["providers"]["libvirt"]["driver"] == driver


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"FWEMU_POLICY": "aws-nbl"},
            "fwemu lab: FWEMU_POLICY=aws-nbl: neither a policy file nor a preset (presets: ",
        ),
        ({"FWEMU_POLICY": "/etc/hostname"}, "the file must be inside"),
        ({"FWEMU_VM_MEMORY": "lots"}, "FWEMU_VM_MEMORY=lots: expected a positive integer"),
        ({"FWEMU_VM_CPUS": "0"}, "FWEMU_VM_CPUS=0: expected a positive integer"),
        ({"FWEMU_VM_DRIVER": "tcg"}, "FWEMU_VM_DRIVER=tcg: expected kvm or qemu"),
        ({"FWEMU_CLIENT_NET": "fd00::/64"}, "FWEMU_CLIENT_NET=fd00::/64: expected an IPv4 network"),
        ({"FWEMU_SERVER_NET": "10.0.0.0/30"}, "FWEMU_SERVER_NET=10.0.0.0/30: the network needs"),
        ({"FWEMU_SERVER_NET": "192.168.61.128/25"}, "FWEMU_SERVER_NET overlap"),
        ({"FWEMU_CLIENT_NET": "banana"}, "FWEMU_CLIENT_NET=banana: expected an IPv4 network"),
    ],
)
def test_bad_settings_stop_vagrant_with_one_clear_line(
    settings: dict[str, str], message: str
) -> None:
    stderr = refusal(**settings)
    assert message in stderr
    assert stderr.startswith("fwemu lab: ")
    assert "\n" not in stderr  # no Ruby backtrace


def test_vagrant_itself_validates_the_vagrantfile() -> None:
    """Vagrant's own check (settings it does not know, bad provisioner keys), without a
    hypervisor: --ignore-provider."""
    result = subprocess.run(
        [tool("vagrant"), "validate", "--ignore-provider"],
        cwd=VAGRANT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "VAGRANT_CHECKPOINT_DISABLE": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Vagrantfile validated successfully" in result.stdout
