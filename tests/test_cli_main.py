from __future__ import annotations

import subprocess
import sys

import pytest

from fracture_qi.cli.main import SUBCOMMANDS, build_parser, main


def test_help_lists_every_built_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    parser = build_parser()
    built = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name in built:
        assert name in out
    assert set(built) <= set(SUBCOMMANDS)


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: fracture-qi" in capsys.readouterr().out


def test_console_script_runs_as_module() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "fracture_qi", "--version"], capture_output=True, text=True
    )
    assert r.returncode == 0 and r.stdout.startswith("fracture-qi ")
