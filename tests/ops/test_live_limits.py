"""`fwemu flows --summary` and `fwemu top` against a real fwemu whose policy has limits: the
counts per client against the limit, and the refusals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fwemu.testing import Firewall, inline_firewall
from tests.e2e.conftest import require_root

from .conftest import Cli

pytestmark = pytest.mark.e2e

PORT = 8301
POLICY = """\
[limits]
max_flows = 1000
per_client = 2
on_full = "reset"
"""


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Firewall, Path]]:
    require_root()
    control = tmp_path_factory.mktemp("control") / "fw.sock"
    with inline_firewall(toml=POLICY, extra_args=["--control", str(control)]) as fw:
        yield fw, control


def test_summary_counts_a_client_against_its_cap_and_the_refusals(
    limited: tuple[Firewall, Path], fwemu: Cli
) -> None:
    fw, control = limited
    with fw.server_socket() as listener:
        listener.bind((fw.server_address(), PORT))
        listener.listen(8)
        held = []
        for _ in range(2):
            sock = fw.client_socket()
            sock.settimeout(3)
            sock.connect((fw.server_address(), PORT))
            held.append(sock)
        refused = fw.client_socket()
        refused.settimeout(3)
        with pytest.raises(ConnectionRefusedError):
            refused.connect((fw.server_address(), PORT))
        refused.close()
        fw.wait_for_event("limit", limit="per_client")

        result = fwemu("flows", "--summary", "--json", "--control", str(control))
        assert result.code == 0, result.err
        summary = json.loads(result.out)
        assert summary["flows"] == 2 and summary["states"] == {"ESTABLISHED": 2}
        [usage] = summary["limits"]
        assert usage["limits"] == "policy"
        assert usage["values"] == {"max_flows": 1000, "per_client": 2}
        assert usage["counts"]["per_client"] == [[fw.client_address(), 2]]
        assert usage["counts"]["max_flows"] == [["table", 2]]
        assert usage["refused"] == {"per_client": 1}

        table = fwemu("flows", "--summary", "--control", str(control))
        assert table.code == 0, table.err
        row = next(line for line in table.out.splitlines() if "per_client" in line)
        assert row.split() == ["per_client", "2", "2", "1", fw.client_address()]

        screen = fwemu("top", "--once", "--control", str(control))
        assert screen.code == 0, screen.err
        assert "per_client" in screen.out and "max_flows" in screen.out
        for sock in held:
            sock.close()


def test_summary_without_limits_says_so(fwemu: Cli, tmp_path: Path) -> None:
    require_root()
    control = tmp_path / "fw.sock"
    with inline_firewall(toml='[policy]\nname = "plain"\n', extra_args=["--control", str(control)]):
        result = fwemu("flows", "--summary", "--control", str(control))
    assert result.code == 0, result.err
    assert result.out.splitlines() == ["0 flows: no flows", "no limits in the policy"]
