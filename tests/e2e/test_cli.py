"""The command line as a user runs it: real processes, exit codes, one readable line on error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import HUE


def lienthong(*args: str, data: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LIENTHONG_")}
    environ |= {"LIENTHONG_DATA_DIR": str(data), "LIENTHONG_LOG_LEVEL": "warning", **env}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], env=environ, capture_output=True,
        text=True, timeout=60, check=False,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lienthong: ")
    return lines[0]


def test_issue_and_revoke_credentials(tmp_path: Path) -> None:
    issued = lienthong("credentials", "issue", HUE, "--label", "QLVB", data=tmp_path)
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    assert token.startswith("lt_") and len(token) > 40
    assert "shown once" in issued.stderr and token not in issued.stderr
    operator = lienthong("credentials", "issue", "--operator", "an.nguyen", data=tmp_path)
    assert operator.returncode == 0 and operator.stdout.strip() != token
    revoked = lienthong("credentials", "revoke", HUE, data=tmp_path)
    assert (revoked.returncode, revoked.stdout.strip()) == (0, f"revoked 1 credential(s) of {HUE}")
    again = lienthong("credentials", "revoke", HUE, data=tmp_path)
    assert again.returncode == 1
    assert "no active credential" in one_error_line(again)


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (("credentials", "issue", "000.99.99.H57"), {}, "unknown agency 000.99.99.H57"),
        (("directory", "check"), {"LIENTHONG_SHARDS": "many"}, "LIENTHONG_SHARDS='many'"),
        (("directory", "check"), {"LIENTHONG_SHRADS": "8"}, "LIENTHONG_SHRADS: unknown setting"),
        (("dlq", "replay", "--comment", "x"), {}, "choose dead letters"),
        (("dlq", "show", "42"), {}, "no dead letter 42"),
        (("credentials", "issue"), {}, "give an agency CODE, or --operator NAME"),
    ],
)
def test_errors_are_one_line_and_a_nonzero_exit(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], expected: str
) -> None:
    result = lienthong(*args, data=tmp_path, **env)
    assert result.returncode == 2
    assert expected in one_error_line(result)


def test_a_broken_directory_names_the_entry(tmp_path: Path) -> None:
    broken = tmp_path / "directory.yaml"
    broken.write_text(
        "levels: [{code: province}, {code: district}]\n"
        "agencies:\n"
        "  - {code: '000.00.00.H57', name: UBND tỉnh, level: province}\n"
        "  - {code: '000.00.31.H57', name: UBND TP Huế, level: district,\n"
        "     parent: '000.00.99.H57'}\n",
        encoding="utf-8",
    )
    result = lienthong("directory", "check", str(broken), data=tmp_path)
    assert result.returncode == 2
    assert "agencies[1] 000.00.31.H57: unknown parent 000.00.99.H57" in one_error_line(result)


def test_usage_errors_exit_2_from_argparse(tmp_path: Path) -> None:
    result = lienthong("credentials", "issue", "H57", data=tmp_path)
    assert result.returncode == 2
    assert "is not an agency code" in result.stderr


def test_topology_export_and_audit_verify(tmp_path: Path) -> None:
    exported = lienthong("topology", "export", data=tmp_path)
    definitions = json.loads(exported.stdout)
    assert {q["name"] for q in definitions["queues"]} >= {"lienthong.dead", "lienthong.delivery.0"}
    lienthong("credentials", "issue", HUE, data=tmp_path)
    verified = lienthong("audit", "verify", data=tmp_path)
    assert (verified.returncode, verified.stdout.strip()) == (0, "audit chain intact: 1 events")
    listed = lienthong("dlq", "ls", data=tmp_path)
    assert listed.returncode == 0 and "0 dead letter(s)" in listed.stderr
