"""The CLI is a thin layer: each command runs, prints what it says, and turns user errors into one line."""

from __future__ import annotations

import json
import re
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


def _stated_default(help_text: str, flag: str) -> str:
    m = re.search(r"\(default:? ([^);:\s]+)", help_text)
    assert m, f"{flag}: no '(default ...)' in its help"
    return m.group(1).rstrip(",")


def test_every_default_a_help_text_states_is_the_codes():
    # A researcher reads the default in --help; it must be the value the code uses (argparse's, or the config's
    # when the flag passes None through).
    from rllc.analysis.hessian import FIM_DEFAULT, HessianConfig, RankConfig
    from rllc.cli import _floats
    from rllc.llc import SamplerConfig

    commands = build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001
    checked = 0
    for name, sub in commands.items():
        for a in sub._actions:  # noqa: SLF001
            m = re.search(r"\(default:? ([^);:\s]+)", a.help or "")
            if m and a.default is not None and not isinstance(a.default, bool):  # store_true flags: False
                said = m.group(1).rstrip(",")
                if isinstance(a.default, list):
                    assert _floats(said) == a.default, (name, a.dest, said)
                elif isinstance(a.default, (int, float)):
                    assert float(said) == a.default, (name, a.dest, said)
                else:
                    assert said == a.default, (name, a.dest, said)
                checked += 1
    assert checked >= 15

    def stated(command: str, flag: str) -> str:
        action = next(a for a in commands[command]._actions if flag in a.option_strings)  # noqa: SLF001
        return action.help

    sampler = SamplerConfig()
    for flag, value in [("--epsilon", sampler.epsilon), ("--nbeta", sampler.nbeta), ("--gamma", sampler.gamma),
                        ("--chains", sampler.chains), ("--draws", sampler.draws), ("--burn-in", sampler.burn_in),
                        ("--batch-size", sampler.batch_size), ("--seed", sampler.seed)]:
        for command in ("llc", "calibrate", "sweep", "susceptibility"):
            assert float(_stated_default(stated(command, flag), flag)) == value, (command, flag)
    trace, rank = HessianConfig(), RankConfig()
    assert f"trace {trace.n_probes}, fim {FIM_DEFAULT.n_probes}, rank {rank.n_probes}" in stated("hessian", "--probes")
    assert f"trace {trace.n_samples}, fim {FIM_DEFAULT.n_samples}, rank {rank.n_samples}" in \
        stated("hessian", "--samples")
    for flag, value in [("--hvp-batch", trace.batch_size), ("--probe-batch", trace.probe_batch),
                        ("--seed", trace.seed), ("--degree", rank.degree), ("--threshold", rank.threshold),
                        ("--threshold-fraction", rank.threshold_fraction), ("--lanczos-steps", rank.lanczos_steps),
                        ("--power-steps", rank.power_steps)]:
        assert float(re.search(r"default:? ([\d.]+)", stated("hessian", flag)).group(1)) == value, flag
    assert "--range=%g,%g (the default)" % rank.range in stated("hessian", "--range")


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


def test_a_reader_that_leaves_is_no_error(tiny_run):
    # `rllc info RUN | head`: stdout is a pipe whose reader is gone before rllc writes. Unbuffered (-u), so the
    # first print meets the closed pipe inside the command, where main() must catch it.
    import os

    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-u", "-m", "rllc.cli", "info", str(tiny_run.path)], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr


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


@pytest.mark.parametrize("alloc", ["torch.empty(10**10)", "numpy.empty(10**11)"])
def test_running_out_of_memory_is_one_line(alloc):
    # A command asking for more memory than there is (e.g. a huge --samples) ended in a MemoryError or torch's
    # "DefaultCPUAllocator: can't allocate memory" RuntimeError traceback. Both are now one line, exit 2. The
    # command is `rllc info` with its work replaced by the allocation, under a 3 GB address-space limit.
    code = ("import resource, sys, numpy, torch\n"
            "resource.setrlimit(resource.RLIMIT_AS, (3 * 10**9, resource.RLIM_INFINITY))\n"
            "import rllc.cli as cli\n"
            f"cli.cmd_info = lambda args: {alloc}\n"
            "sys.exit(cli.main(['info', '.']))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rllc: error: out of memory"), out.stderr
