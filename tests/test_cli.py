"""The CLI is a thin layer: each command runs, prints what it says, and turns user errors into one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rllc.cli import build_parser, main


def test_every_command_has_help_text(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse has no public accessor
    for name, sub in commands.items():
        assert sub.description and len(sub.description) > 40, name
        for action in sub._actions:  # noqa: SLF001
            if action.dest != "help":
                assert action.help, f"{name} {action.dest} has no help"


def test_llc_json_on_a_tiny_run(tiny_run, capsys):
    code = main(["llc", str(tiny_run.path), "--component", "1:0", "--draws", "5", "--chains", "2", "--n-samples",
                 "64", "--batch-size", "8", "--json", "--quiet"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["step"] == 40 and out["component"] == "1:0" and len(out["per_chain"]) == 2
    assert len(out["loss_trace"][0]) == 5 and out["config"]["nbeta"] == 30.0


def test_llc_unknown_component_is_one_line(tiny_run):
    proc = subprocess.run([sys.executable, "-m", "rllc.cli", "llc", str(tiny_run.path), "--component", "7:0",
                           "--draws", "2"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "unknown head '7:0'" in proc.stderr


@pytest.mark.parametrize("argv", [["train", "--out", "x", "--seeds", "1,a"], ["llc"]])
def test_argument_errors_exit_2(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
