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


@pytest.mark.parametrize("argv", [["train", "--out", "x", "--seeds", "1,a"], ["llc"],
                                  ["import", "SRC", "--out", "x", "--data", "code", "--steps", "1000,a"]])
def test_argument_errors_exit_2(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2


def test_hessian_flags_set_the_chosen_measures_settings():
    from rllc._errors import RllcError
    from rllc.analysis.hessian import FIM_DEFAULT, HessianConfig, RankConfig
    from rllc.cli import _hessian_config

    def cfg(*flags):
        return _hessian_config(build_parser().parse_args(["hessian", "RUN", *flags]))

    assert cfg() == cfg("--measure", "rank") and cfg().trace == HessianConfig() and cfg().fim == FIM_DEFAULT
    trace = cfg("--probes", "3", "--samples", "7", "--seed", "5")
    assert (trace.trace.n_probes, trace.trace.n_samples, trace.trace.seed) == (3, 7, 5)
    assert trace.rank == RankConfig() and trace.fim == FIM_DEFAULT  # only the chosen measure changes
    fim = cfg("--measure", "fim", "--probes", "4", "--reuse-fim-samples")
    assert fim.fim.n_probes == 4 and fim.fim.n_samples == FIM_DEFAULT.n_samples and fim.reuse_fim_samples
    rank = cfg("--measure", "rank", "--degree", "9", "--strategy", "adaptive", "--range=-5,50", "--threshold",
               "2")
    assert (rank.rank.degree, rank.rank.strategy, rank.rank.range, rank.rank.threshold) == (9, "adaptive",
                                                                                            (-5.0, 50.0), 2.0)
    paper = cfg("--measure", "rank", "--rank-preset", "paper-fixed", "--probes", "2")
    assert paper.rank == RankConfig.paper_fixed(n_probes=2)  # a flag replaces one setting of the preset
    with pytest.raises(RllcError, match="--degree"):
        cfg("--degree", "9")


@pytest.mark.parametrize("command", ["llc", "sweep", "calibrate"])
def test_sampler_flags_reach_the_kernel_and_are_explained(command):
    from rllc.cli import _sampler_overrides
    from rllc.llc import SamplerConfig

    args = build_parser().parse_args([command, "RUN", "--sampler", "rmsprop_sgld", "--sampler-setting", "alpha=0.9",
                                      "--sampler-setting", "adapt=always"])
    cfg = SamplerConfig(**_sampler_overrides(args))
    assert cfg.sampler == "rmsprop_sgld" and cfg.settings()["alpha"] == 0.9 and cfg.settings()["adapt"] == "always"
    sub = build_parser()._subparsers._group_actions[0].choices[command]  # noqa: SLF001
    text = " ".join(sub.format_help().split())
    for word in ("alpha", "stabiliser", "adapt", "adapt_fraction", "warmup", "rmsprop_sgld"):
        assert word in text, word
