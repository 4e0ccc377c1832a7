"""The `rllc` command: a thin layer over the Python API (parsing, printing, exit codes; no logic of its own)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from rllc._errors import RllcError, check_writable

DESCRIPTION = """\
rllc: refined local learning coefficients (rLLC) of attention heads over training.

Train a small attention-only transformer with checkpoints across training, then measure how each head
develops. Start with `rllc demo` (CPU, offline, 10–13 minutes on 2 idle cores: 564–800 s measured, see
the README); `rllc COMMAND --help` explains each command and its flags."""


def _positive_int(s: str) -> int:
    try:
        n = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return n


def _ints(s: str) -> list[int]:
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="cpu", choices=["cpu", "cpu-dyck", "paper"],
                   help="'cpu': 2 layers x 4 heads, d_model 64, n_ctx 64, 5,000 steps, about 2.5 min on 2 cores "
                        "(156 s measured on an idle machine; default); 'cpu-dyck': the same with a fifth of the "
                        "data nested-bracket sequences (synthetic.dyck), for the multigram circuit (§4.3); "
                        "'paper': the paper's 2x8 heads, d_model 256, n_ctx 1024, 50k steps")
    p.add_argument("--data", help="training data: a named source (prose, code, synthetic, synthetic.repeat, ...; "
                                  "pretrain is the cpu preset's mixture prose*0.35,code*0.15,synthetic.repeat*0.5), "
                                  "a mixture 'prose*0.5,synthetic.repeat*0.5', a text file, directory, glob or "
                                  "FILE.jsonl:FIELD; default: the preset's mixture")
    p.add_argument("--steps", type=int, help="training steps (default: the preset's)")
    p.add_argument("--batch-size", type=int, help="sequences per step (default: the preset's)")
    p.add_argument("--lr", type=float, help="AdamW learning rate (default: the preset's)")
    p.add_argument("--layers", type=int, dest="n_layers", metavar="N",
                   help="number of layers; 1 or 0 ('bigram') for reference models (default: the preset's 2)")
    p.add_argument("--vocab-size", type=int, help="BPE vocabulary size (default: the preset's)")
    p.add_argument("--checkpoints", help="checkpoint steps: 'paper' (the default: the paper's schedule, dense early "
                                         "and sparse late, scaled to --steps; 107 checkpoints at the cpu preset's "
                                         "5,000 steps), 'every:N' or 'S1,S2,...'")
    p.add_argument("--device", default="cpu", help="'cpu' (default) or 'cuda'")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _preset_configs(args: argparse.Namespace, seed: int | None):  # noqa: ANN202
    from rllc.train import preset

    return preset(args.preset, data=args.data, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                  n_layers=args.n_layers, vocab_size=args.vocab_size, checkpoints=args.checkpoints, seed=seed)


def cmd_train(args: argparse.Namespace) -> None:
    from rllc.train import train_model

    seeds = args.seeds or [args.seed]
    configs = [_preset_configs(args, seed) for seed in seeds]  # every seed's config checked before any trains
    for seed, (model_cfg, train_cfg) in zip(seeds, configs):
        out = Path(args.out) if len(seeds) == 1 else Path(f"{args.out}-seed{seed}")
        run = train_model(model_cfg, train_cfg, out, device=args.device, progress=not args.quiet)
        print(f"{out}: {len(run.steps)} checkpoints, last step {run.steps[-1]}, "
              f"val loss {run.metadata(run.steps[-1])['val_loss']:.3f}")


def cmd_info(args: argparse.Namespace) -> None:
    from rllc.train import load_run

    run = load_run(args.run_dir)
    cfg = run.config
    if hasattr(run, "provenance"):  # an imported series: where it came from instead of a training config
        print(json.dumps({"model": cfg.model.to_dict(), "data": cfg.train.data, "imported": run.provenance,
                          "tokenizer_id": cfg.tokenizer_id}, indent=1))
    else:
        print(json.dumps({"model": cfg.model.to_dict(), "train": cfg.train.to_dict(),
                          "tokenizer_id": cfg.tokenizer_id}, indent=1))
    table = run.checkpoints()
    print(f"{len(table)} checkpoints")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4f}"))


def cmd_import(args: argparse.Namespace) -> None:
    from rllc.runs import import_series

    run = import_series(args.src, args.out, data=args.data, steps=args.steps or None, copy=args.copy,
                        tokenizer=args.tokenizer, n_ctx=args.n_ctx)
    p, m = run.provenance, run.config.model
    print(f"{run.path}: {len(run.steps)} checkpoints of a {p['family']} model ({m.n_layers} layers × {m.n_heads} "
          f"heads, vocabulary {m.d_vocab}) from {p['source']} ({'copied' if p['copied'] else 'referenced'}); "
          f"steps {run.steps[0]} … {run.steps[-1]}; pretrain data {run.config.train.data}")


def cmd_heads(args: argparse.Namespace) -> None:
    from rllc.analysis import HeadAnalysisConfig, TokensInContextConfig, heads_command

    config = HeadAnalysisConfig()
    if args.tic == "paper":
        config = HeadAnalysisConfig(tic=TokensInContextConfig.paper())
    res = heads_command(args.run_dir, args.steps, config=config, progress=not args.quiet, executor=args.executor,
                        address=args.address, workers=args.workers)
    table = res.table
    if not args.all_columns:  # the columns a researcher reads first, under short names: fits a 100-column terminal
        table = table[[c for c in _HEAD_COLUMNS if c in table]].rename(columns=_HEAD_COLUMNS)
    print(table.drop(columns=["evidence"], errors="ignore").to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    if not args.all_columns:
        print(f"(main scores only; all {len(res.table.columns)} columns: --all-columns, or "
              f"{Path(args.run_dir) / 'heads' / 'head_types.csv'})")
    for line in res.summary:
        print(line)


_HEAD_COLUMNS = {"component": "head", "prev_token_score": "prev-token", "induction_score": "induction",
                 "current_token_score": "current-token", "prefix_matching_score": "prefix-match",
                 "ablation_mean": "mean-ablation", "label": "type", "confidence": "confidence"}


def _floats(s: str) -> list[float]:
    try:
        return [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from None


def _setting(s: str) -> tuple[str, float | str]:
    name, sep, value = s.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE (e.g. alpha=0.99 or adapt=always), got {s!r}")
    try:
        return name.strip(), float(value)
    except ValueError:
        return name.strip(), value.strip()  # a word setting (adapt); the kernel checks it


def _add_sampler_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampler (defaults: the paper's released configs)")
    from rllc.llc.kernels import KERNELS

    g.add_argument("--sampler", choices=sorted(KERNELS),
                   help="kernel: sgld (default, the paper's) or rmsprop_sgld (RMSProp-preconditioned SGLD, devinterp's "
                        "update with its preconditioner frozen after adapting in burn-in by default; Hitchcock & "
                        "Hoogland 2025); see docs/llc.md")
    g.add_argument("--sampler-setting", action="append", metavar="NAME=VALUE", type=_setting,
                   help="a kernel setting, repeatable (sgld has none). rmsprop_sgld preconditions each step by "
                        "G = 1/(sqrt(V) + eps), V the running average of squared minibatch gradients: alpha (V's "
                        "decay per step, default 0.99), eps (the stabiliser in G, not the step size; default 0.1, "
                        "so G <= 10: use an --epsilon ~10x smaller than sgld's), adapt (burnin, the default: V "
                        "adapts during the first adapt_fraction of the burn-in, default 0.5, then is frozen, so the "
                        "draws sample the exact posterior; always: devinterp's update, V follows the chain, biased "
                        "upward) and warmup (steps V adapts when --burn-in is 0, default 100; those are also draws)")
    g.add_argument("--epsilon", type=float, help="step size ε (default 1e-3)")
    g.add_argument("--nbeta", type=float, help="inverse temperature times sample size, nβ (default 30)")
    g.add_argument("--gamma", type=float, help="localisation strength γ (default 200)")
    g.add_argument("--chains", type=int, help="independent chains (default 4)")
    g.add_argument("--draws", type=int, help="recorded draws per chain (default 200)")
    g.add_argument("--burn-in", type=int, help="steps discarded before the first draw (default 0)")
    g.add_argument("--batch-size", type=int, help="sequences per SGLD minibatch (default 32)")
    g.add_argument("--seed", type=int, help="sampler seed (default 0)")
    g.add_argument("--paired", action=argparse.BooleanOptionalAction, default=None,
                   help="subtract the loss at w* on each draw's own minibatch (less variance, one more forward "
                        "per draw); default: off for `llc`/`calibrate` (the paper's estimator), on for `sweep` and "
                        "`susceptibility`; --no-paired turns it off")
    p.add_argument("--n-samples", type=_positive_int, default=2048,
                   help="token windows drawn (seeded) from the data set to estimate on (default 2048)")


def _add_executor_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where the jobs run (every measure over checkpoints: sweep, heads, hessian)")
    g.add_argument("--executor", default="inprocess", choices=["inprocess", "pool", "ray"],
                   help="inprocess (default), a local process pool, or Ray")
    g.add_argument("--address", help="Ray cluster address (with --executor ray); default: a private local runtime "
                                     "bound to 127.0.0.1 with usage stats off")
    g.add_argument("--workers", type=_positive_int, metavar="N",
                   help="pool processes, or the CPUs of a local Ray runtime (default: all CPUs); on an existing Ray "
                        "cluster (--address) the tasks in flight are capped at 2 x N (default: 2 x its CPUs)")


def _add_probe_args(p: argparse.ArgumentParser, *, required: bool) -> None:
    g = p.add_argument_group("probes (susceptibilities from the same draws)")
    g.add_argument("--probes", required=required, default=None,
                   help="probe data sets, comma-separated: code, prose, synthetic.induction, synthetic.repeat, "
                        "synthetic.dyck, a path, a mixture; each is evaluated at every draw of the chains, giving "
                        "every component's per-token susceptibility chi_i = -Cov(phi, l_i - L) and LLC contribution "
                        "to each of its tokens" + ("" if required else
                                                    " (default: none, a plain sweep)"))
    g.add_argument("--probe-samples", type=_positive_int, default=8,
                   help="windows drawn from each probe (default 8: 512 tokens at the cpu preset's n_ctx 64)")
    g.add_argument("--probe-seed", type=int, default=1, help="seed of the probe windows (default 1)")
    g.add_argument("--probe-split", default="val", choices=["val", "train"],
                   help="split the probe windows come from (default val: held out)")


def _add_sweep_args(p: argparse.ArgumentParser, *, components: str, probes_required: bool) -> None:
    """The flags of the SGLD measures over checkpoints (`sweep`, `susceptibility`): what to estimate where, the
    probes, the executor, the sampler."""
    p.add_argument("run_dirs", nargs="+", help="run directories (several: e.g. one per seed)")
    p.add_argument("--components", default=components,
                   help="'heads' (every head: wrLLC), 'all' (full model), 'layer:0', 'l:h', 'a+b' for a union; "
                        f"comma-separated (default {components})")
    p.add_argument("--data", default="pretrain",
                   help="data sets the posterior is sampled on (its L_n), comma-separated: pretrain, code, prose, "
                        "synthetic.dyck, a path, or model:RUN_DIR@STEP (a reference model's predictions as soft "
                        "targets); default pretrain")
    p.add_argument("--steps", default="all", help="checkpoints: all, last, every:N, log:N or S1,S2,... (default all)")
    _add_probe_args(p, required=probes_required)
    _add_executor_args(p)
    _add_sampler_args(p)
    p.add_argument("--quiet", action="store_true", help="no plan, estimate or progress bar")


def _sampler_overrides(args: argparse.Namespace) -> dict:
    keys = ("epsilon", "nbeta", "gamma", "chains", "draws", "burn_in", "batch_size", "seed", "paired", "sampler")
    out = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    if getattr(args, "sampler_setting", None):
        out["sampler_settings"] = tuple(sorted(dict(args.sampler_setting).items()))
    return out


def _llc_inputs(args: argparse.Namespace):  # noqa: ANN202
    from rllc.train import load_run

    run = load_run(args.run_dir)
    step = run.steps[-1] if args.step is None else args.step
    model = run.model_at(step)
    tokens = run.sample_tokens(args.data, args.n_samples)
    return run, step, model, tokens


def cmd_llc(args: argparse.Namespace) -> None:
    from rllc.llc import estimate_llc

    run, step, model, tokens = _llc_inputs(args)
    res = estimate_llc(model, tokens, component=args.component, progress=not args.quiet, **_sampler_overrides(args))
    if args.json:
        d = res.diagnostics
        print(json.dumps({"run": str(run.path), "step": step, "data": args.data, **res.to_dict(),
                          "ess": d.to_dict()["ess"], "rhat": d.to_dict()["rhat"]}))
        return
    c = res.config
    print(f"λ̂ = {res.mean:.3f} ± {res.std:.3f}  (run {run.path.name}, step {step}, component "
          f"{res.component or 'all'}, data {args.data})")
    print(f"per chain: {', '.join(f'{x:.3f}' for x in res.per_chain)};  L_n(w*) = {res.init_loss:.4f}")
    kernel = c.sampler + "".join(f" {k}={v}" if isinstance(v, str) else f" {k}={v:g}" for k, v in c.settings().items())
    print(f"{kernel} ε={c.epsilon:g} nβ={c.nbeta:g} γ={c.gamma:g} chains={c.chains} draws={c.draws} "
          f"burn-in={c.burn_in} batch={c.batch_size} seed={c.seed}")
    d = res.diagnostics
    print(f"valid={res.valid} converged={d.converged} split-R-hat={d.rhat:.3f} bulk ESS={d.ess:.0f} "
          f"(per chain {', '.join(f'{x:.0f}' for x in d.ess_per_chain)}) suggested burn-in={d.burn_in} draws")
    for m in d.messages:
        print(f"warning: {m}")


def cmd_calibrate(args: argparse.Namespace) -> None:
    from rllc.llc import calibrate, plot_calibration

    out = Path(args.plot) if args.plot else None
    if out is not None and out.is_dir():  # before the sampling, not after it
        raise RllcError(f"--plot {out} is a folder; give the PNG's path, e.g. {out / 'calibration.png'}")
    check_writable(out.parent if out else args.run_dir, "cannot write the traces plot; pass --plot a writable path")
    run, step, model, tokens = _llc_inputs(args)
    out = out or Path(args.run_dir) / f"calibration_step{step}.png"
    result = calibrate(model, tokens, epsilons=args.epsilons, nbetas=args.nbetas, gammas=args.gammas,
                       component=args.component, progress=not args.quiet, **_sampler_overrides(args))
    cols = [c for c in result.table.columns if c not in ("loss_trace",)]
    print(result.table[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    for m in result.messages:
        print(f"note: {m}")
    plot_calibration(result, out, title=f"{Path(args.run_dir).name} step {step}, component "
                                         f"{args.component or 'all'}, data {args.data}")
    rec = result.recommended
    if rec is None:
        print("no setting recommended; widen the grid (smaller ε, larger γ) and look at the plot")
    else:
        print(f"recommended: --epsilon {rec.epsilon:g} --nbeta {rec.nbeta:g} --gamma {rec.gamma:g}  (the largest "
              f"usable ε; a tie goes to the first nβ and γ listed: --nbetas {','.join(f'{x:g}' for x in args.nbetas)}"
              f", --gammas {','.join(f'{x:g}' for x in args.gammas)})")
    print(f"loss traces: {out}")


def cmd_sweep(args: argparse.Namespace) -> None:
    from rllc.sweep import run_sweep

    result = run_sweep(args.run_dirs, components=args.components, data=args.data, steps=args.steps,
                       n_samples=args.n_samples, executor=args.executor, address=args.address, workers=args.workers,
                       progress=not args.quiet, **_probe_args(args), **_sampler_overrides(args))
    print(result)


def _probe_args(args: argparse.Namespace) -> dict:
    if args.probes is None:
        return {}
    return {"probes": args.probes, "probe_samples": args.probe_samples, "probe_seed": args.probe_seed,
            "probe_split": args.probe_split}


def cmd_susceptibility(args: argparse.Namespace) -> None:
    from rllc.sweep.susceptibility import run_susceptibility

    result = run_susceptibility(args.run_dirs, components=args.components, data=args.data, steps=args.steps,
                                n_samples=args.n_samples, executor=args.executor, address=args.address,
                                workers=args.workers, progress=not args.quiet, **_probe_args(args),
                                **_sampler_overrides(args))
    print(result)
    print(f"per-token arrays: {Path(args.run_dirs[0]) / 'arrays' / 'susceptibility'}; `rllc report "
          f"{args.run_dirs[0]}` draws the response matrix and the attributions")


def cmd_plot(args: argparse.Namespace) -> None:
    from rllc.report.curves import plot_sweep

    for path in plot_sweep(args.run_dirs, args.out, config_hash=args.config_hash):
        print(path)


def cmd_export(args: argparse.Namespace) -> None:
    from rllc.sweep import export_results

    for path in export_results(args.run_dirs, args.out, formats=args.formats.split(",")):
        print(path)


def _hessian_config(args: argparse.Namespace):  # noqa: ANN202
    """The HessianSweepConfig the flags ask for: each given flag replaces that setting of the chosen measure."""
    from dataclasses import replace

    from rllc.analysis.hessian import RankConfig
    from rllc.analysis.hessian_sweep import HessianSweepConfig

    rank = {"default": RankConfig(), "paper-fixed": RankConfig.paper_fixed(),
            "paper-adaptive": RankConfig.paper_adaptive()}[args.rank_preset]
    cfg, part = HessianSweepConfig(rank=rank, reuse_fim_samples=args.reuse_fim_samples), args.measure
    rank_only = {"--degree": args.degree, "--strategy": args.strategy, "--range": args.range,
                 "--threshold": args.threshold, "--threshold-fraction": args.threshold_fraction,
                 "--lanczos-steps": args.lanczos_steps, "--power-steps": args.power_steps,
                 "--rank-preset": None if args.rank_preset == "default" else args.rank_preset}
    if part != "rank" and any(v is not None for v in rank_only.values()):
        given = ", ".join(k for k, v in rank_only.items() if v is not None)
        raise RllcError(f"{given}: settings of the Hessian rank; add --measure rank or drop them")
    flags = {"n_probes": args.probes, "n_samples": args.samples, "batch_size": args.hvp_batch,
             "probe_batch": args.probe_batch, "seed": args.seed}
    if args.measure == "rank":
        flags |= {"degree": args.degree, "strategy": args.strategy, "threshold": args.threshold,
                  "threshold_fraction": args.threshold_fraction, "lanczos_steps": args.lanczos_steps,
                  "power_steps": args.power_steps, "range": None if args.range is None else tuple(args.range)}
    given = {k: v for k, v in flags.items() if v is not None}
    return replace(cfg, **{part: replace(getattr(cfg, part), **given)})


def cmd_hessian(args: argparse.Namespace) -> None:
    from rllc.analysis.hessian_sweep import hessian_sweep

    cfg = _hessian_config(args)
    res = hessian_sweep(args.run_dir, measure=args.measure, components=args.components, data=args.data,
                        steps=args.steps, config=cfg, progress=not args.quiet, executor=args.executor,
                        address=args.address, workers=args.workers)
    print(res)
    print(f"`rllc plot {args.run_dir}` draws them, `rllc export {args.run_dir}` writes them")


def cmd_report(args: argparse.Namespace) -> None:
    from rllc.report.html import write_report

    print(write_report(args.run_dirs, args.out))


def cmd_demo(args: argparse.Namespace) -> None:
    from rllc.workflows import demo

    result = demo(args.out, steps=args.steps, seed=args.seed, progress=not args.quiet, preset=args.preset)
    cols = ["component", "prev_token_score", "current_token_score", "induction_score", "label", "confidence"]
    print(f"\nheads at the last checkpoint (step {result.last_step}):")
    print(result.head_table[[c for c in cols if c in result.head_table]].to_string(
        index=False, float_format=lambda x: f"{x:.3f}"))
    print()
    for line in result.summary:
        print(line)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rllc", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from rllc import __version__

    parser.add_argument("--version", action="version", version=f"rllc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="the whole method on CPU: train, rLLC sweep, head analysis, stages, report",
                       description="Train the `cpu` preset on the built-in offline corpus (prose + Python code + "
                                   "repeated random spans) keeping checkpoints across training; estimate per-head "
                                   "rLLCs on the pre-training data, on code, on repeated spans and on prose, the "
                                   "full-model LLC and Hessian trace over training; analyse every head (scores, "
                                   "ablations, composition, head types); find the developmental stages of the LLC "
                                   "and time the induction heads' formation against them; write figures and one "
                                   "HTML report that opens with the sampler, its bias against the paper's and the "
                                   "paper's findings with verdicts. Sized for 15 minutes on 2 cores; last "
                                   "measured end to end at 564–800 s on idle 2-core machines (the README says where "
                                   "and how it was measured); on a loaded "
                                   "machine set OMP_NUM_THREADS=1. Interrupt and re-run to resume.")
    p.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    p.add_argument("--steps", type=int, help="training steps (default: the cpu preset's)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--preset", default="default", choices=["default", "long", "dyck"],
                   help="default: the demo sampler (the paper's ε, nβ, γ, 4 chains; 20 draws of batch 8 after 50 "
                        "burn-in steps, paired); long: also re-estimates every head and the full model at 3 "
                        "checkpoints with the paper's sampler (4 x 200 draws, batch 32, paired) so the report "
                        "shows the demo sampler's measured bias (that part took 3,093 s on a shared 2-core machine "
                        "at load 8-14: README); dyck: the multigram circuit (§4.3) instead — "
                        "trains the cpu-dyck preset (a fifth of the data nested brackets) and a 1-layer "
                        "reference beside it (OUT-ref1), sweeps the layer-0 heads' wrLLC and model-as-generator "
                        "wdrLLC at 10 checkpoints, analyses the heads there (Dyck path patching at each) and "
                        "prints the finding (--out then defaults to runs/demo-dyck)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train a model, keeping checkpoints across training (resumable)",
                       description="Train an attention-only transformer and write checkpoints (safetensors with "
                                   "TransformerLens keys + JSON metadata) on a schedule dense early and sparse "
                                   "late. Re-running the same command after an interruption resumes exactly.")
    p.add_argument("--out", required=True, help="run directory to create (or resume)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--seeds", type=_ints, help="several seeds, e.g. 1,2,3: one run per seed in OUT-seedS")
    _add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("info", help="print a run's configuration and checkpoints",
                       description="Print a run directory's model and training configuration and its "
                                   "checkpoint table (step, tokens seen, train and validation loss).")
    p.add_argument("run_dir", help="run directory")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("import", help="make a run directory of your own model's checkpoint series",
                       description="Make a run directory from a checkpoint series rllc did not train, so info, "
                                   "llc, calibrate, sweep, heads, hessian, plot, export and report work on it. SRC "
                                   "is a directory of save_pretrained snapshots named by step (checkpoint-1000/, "
                                   "step_1000/, step1000/; GPT-2 or GPT-NeoX), a local Hugging Face cache of one "
                                   "model with revisions stepN (the models--ORG--NAME directory, or hf:ORG/NAME), "
                                   "or a directory of TransformerLens state dicts (step_N.safetensors) beside "
                                   "their config.json. Weights are referenced, not copied (unless --copy); nothing "
                                   "is downloaded.")
    p.add_argument("src", help="the checkpoint series (see above)")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--data", required=True, help="the model's pretraining data, recorded as 'pretrain': a text "
                                                 "path or glob, a JSONL field, hf:... (tokenised with the model's "
                                                 "own tokenizer)")
    p.add_argument("--steps", type=_ints, help="only these steps, comma-separated (default every checkpoint found)")
    p.add_argument("--copy", action="store_true", help="copy the weights into RUN_DIR/checkpoints/")
    p.add_argument("--tokenizer", help="tokenizer.json (or its directory) when the snapshots have none")
    p.add_argument("--n-ctx", type=int, help="window length of the data sets (default the model's context)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("heads", help="head analysis over training: scores, ablations, composition, head types",
                       description="Compute and store, over checkpoints, every head's previous-token, "
                                   "current-token, induction and prefix-matching scores, ICL score, zero/mean/"
                                   "resample ablation scores and Q/K/V-composition; at the last checkpoint, "
                                   "tokens in context, path patching and automatic head types. Writes tables, "
                                   "PNGs and a tokens-in-context HTML page into RUN_DIR/heads; re-runs skip "
                                   "what is stored. Prints the plan and its measured duration first.")
    p.add_argument("run_dir", help="run directory")
    p.add_argument("--steps", help="checkpoints: all, last, every:N, log:N or S1,S2,... (default log:16: 16 spread "
                                   "on a log step axis, first and last included)")
    p.add_argument("--tic", default="cpu", choices=["cpu", "paper"],
                   help="tokens-in-context scale: cpu (128 sequences, top 100 per head; the default) or paper "
                        "(Appendix B: 100,000 sequences, top 1,000). The n-gram and skip n-gram shares depend on "
                        "top k (a pattern must recur among a head's top k), so compare heads at one scale")
    p.add_argument("--all-columns", action="store_true",
                   help="print every column of the head table (default: the main scores and the head type)")
    _add_executor_args(p)
    p.add_argument("--quiet", action="store_true", help="no plan, estimate or progress bar")
    p.set_defaults(func=cmd_heads)

    p = sub.add_parser("llc", help="estimate a (refined) local learning coefficient at one checkpoint",
                       description="Estimate λ̂ = nβ (E[L_n(w)] − L_n(w*)) by SGLD at one checkpoint. "
                                   "--component restricts which weights move (weight-refined, e.g. one head "
                                   "'1:2'); --data measures the loss on another distribution (data-refined, "
                                   "e.g. 'code'); both together give the wdrLLC.")
    p.add_argument("run_dir", help="run directory")
    p.add_argument("--step", type=int, help="checkpoint step (default: the last)")
    p.add_argument("--component", help="what moves: a head 'l:h', 'layer:l', 'embed', 'pos_embed', 'unembed', "
                                       "'ln', 'all', or a union joined by '+' such as '0:1+0:3' (the older "
                                       "'0:1,0:3' means the same; default: all)")
    p.add_argument("--data", default="pretrain", help="data set: 'pretrain' (the run's training data, default), "
                                                      "'code', 'prose', 'synthetic.dyck', a path, ...")
    _add_sampler_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (estimate, traces, diagnostics)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_llc)

    p = sub.add_parser("calibrate", help="choose the SGLD step size: a grid over ε, nβ and γ",
                       description="Run the LLC estimator over a grid of step sizes ε, inverse temperatures nβ "
                                   "and localisations γ; flag cells whose chains diverge or have not converged, "
                                   "recommend a setting, and plot the loss traces of every cell.")
    p.add_argument("run_dir", help="run directory")
    p.add_argument("--step", type=int, help="checkpoint step (default: the last)")
    p.add_argument("--component", help="what moves, as for `rllc llc`: a head 'l:h', 'layer:l', 'embed', ..., "
                                       "'all', or a union 'a+b' (default: all)")
    p.add_argument("--data", default="pretrain", help="data set, as for `rllc llc` (default: pretrain, the run's "
                                                      "training data)")
    p.add_argument("--epsilons", type=_floats, default=[3e-4, 1e-3, 3e-3], help="ε grid (default 3e-4,1e-3,3e-3)")
    p.add_argument("--nbetas", type=_floats, default=[30.0, 10.0],
                   help="nβ grid (default 30,10); cells usable at the same ε are a tie, won by the first nβ listed "
                        "(30: the paper's)")
    p.add_argument("--gammas", type=_floats, default=[200.0], help="γ grid (default 200)")
    p.add_argument("--plot", help="PNG path for the traces (default RUN_DIR/calibration_stepS.png)")
    _add_sampler_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("sweep", help="LLC curves over training: checkpoints x components x data sets",
                       description="Estimate an LLC for every checkpoint x component x data set and store each in "
                                   "RUN_DIR/results.sqlite. Re-running computes only what is missing; changed "
                                   "sampler settings make new rows. Runs in-process by default, on a local "
                                   "process pool, or on Ray (--executor ray [--address ADDR]). Prints the plan "
                                   "and its duration, measured on a short probe, before it starts.")
    _add_sweep_args(p, components="heads,all", probes_required=False)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("susceptibility", help="per-token susceptibilities of heads to probe data over training",
                       description="At every checkpoint x component x sampling data set, sample the component's "
                                   "local posterior by SGLD (as `rllc sweep`) and evaluate every probe data set at "
                                   "every draw: the susceptibility of the component to each probe token, chi_i = "
                                   "-Cov(phi, l_i - L) with phi the component's loss shift on the sampling data "
                                   "(Baker et al. 2025; the exact formula and sign in rllc.llc.response), its "
                                   "mean per probe with a standard error over chains, and the per-token LLC "
                                   "contributions nbeta(E[l_i] - l_i(w*)). The rLLC of each component comes from "
                                   "the same chains and is stored as `rllc sweep` stores it. Summaries go to "
                                   "RUN_DIR/results.sqlite, per-token arrays to RUN_DIR/arrays/ (safetensors); "
                                   "re-running computes only what is missing. `rllc report` then draws the "
                                   "response matrix (heads x probes) over training and the attributions in "
                                   "context.")
    _add_sweep_args(p, components="heads", probes_required=True)
    p.set_defaults(func=cmd_susceptibility)

    p = sub.add_parser("plot", help="draw the stored LLC curves (per head, per data set, full model)",
                       description="Write PNGs of the stored LLC curves: per-head wrLLC over training (one panel "
                                   "per layer, shaded chain spread), the same per data set, and the full-model LLC "
                                   "beside the loss.")
    p.add_argument("run_dirs", nargs="+", help="run directories")
    p.add_argument("--out", help="output directory (default RUN_DIR/plots; with several runs, one folder per run "
                                 "inside it)")
    p.add_argument("--config-hash", metavar="HASH",
                   help="only the results stored under this settings hash (the config_hash column of "
                        "`rllc export`; default: every hash, one figure each)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("export", help="write every stored result as CSV and Parquet",
                       description="Write the long-form results table (one row per step, component, data set "
                                   "and measure) as results.csv and results.parquet.")
    p.add_argument("run_dirs", nargs="+", help="run directories")
    p.add_argument("--out", help="output directory (default: the first run directory)")
    p.add_argument("--formats", default="csv,parquet",
                   help="csv, parquet or both, comma-separated (default csv,parquet; Parquet needs pyarrow, the "
                        "[export] extra: without it pass --formats csv)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("hessian", help="Hessian trace, FIM trace or Hessian rank over training",
                       description="Estimate the Hessian trace (Hutchinson), the FIM trace (data sampled from the "
                                   "model) or the Hessian rank (Chebyshev step function) at every checkpoint x "
                                   "component x data set and store it beside the LLC results. Re-runs skip what "
                                   "is stored; prints the plan and its measured duration first.")
    p.add_argument("run_dir", help="run directory")
    p.add_argument("--measure", default="trace", choices=["trace", "fim", "rank"],
                   help="trace: the Hessian trace by Hutchinson's estimator (default); fim: the Fisher information "
                        "trace, on sequences sampled from the model; rank: the Hessian rank (Chebyshev step "
                        "function of the spectrum)")
    p.add_argument("--components", default="all", help="components as for `rllc sweep` (default all)")
    p.add_argument("--data", default="pretrain", help="data sets as for `rllc sweep` (ignored for fim)")
    p.add_argument("--steps", default="all", help="checkpoints: all, last, every:N, log:N or S1,S2,... (default all)")
    g = p.add_argument_group("estimator settings (defaults: the paper's, per measure)")
    g.add_argument("--probes", type=int, help="Rademacher probes (default: trace 50, fim 5, rank 20)")
    g.add_argument("--samples", type=int, help="data sequences the loss is averaged over, or sequences sampled "
                                               "from the model for fim (default: trace 100, fim 30, rank 100)")
    g.add_argument("--hvp-batch", type=int, help="sequences per Hessian-vector product (memory; default 32)")
    g.add_argument("--probe-batch", type=int, help="probes per vmapped Hessian-vector product (speed against "
                                                   "memory; the value does not depend on it; default 1)")
    g.add_argument("--seed", type=int, help="seed of the probes and of fim's sampled sequences (default 0)")
    g.add_argument("--reuse-fim-samples", action="store_true",
                   help="fim: sample sequences once, from the last checkpoint, and reweight them at every checkpoint")
    g = p.add_argument_group("Hessian rank (--measure rank): --rank-preset, then any of these replaces one setting")
    g.add_argument("--rank-preset", default="default", choices=["default", "paper-fixed", "paper-adaptive"],
                   help="Hessian rank settings: default (the paper's range (-1000, 6000), threshold 500 and degree "
                        "100, on 100 samples x 20 probes for a standard error), paper-fixed (the same on the paper's "
                        "3 samples x 1 probe), paper-adaptive (range +-|lambda_max| by power iteration, threshold "
                        "500, 3 x 1); every estimate is flagged invalid when the spectrum leaves the range")
    g.add_argument("--degree", type=int, help="Chebyshev degree of the step function (default 100, the paper's)")
    g.add_argument("--strategy", choices=["fixed", "adaptive", "lanczos"],
                   help="'fixed': --range and --threshold as given (default); 'adaptive': range +-|lambda_max| by "
                        "power iteration, threshold as given (the paper's two); 'lanczos': range from Lanczos "
                        "extremes, threshold = --threshold-fraction x lambda_max (rllc's own)")
    g.add_argument("--range", type=_floats, metavar="A,B",
                   help="spectrum interval a,b for 'fixed', written --range=-1000,6000 (the default)")
    g.add_argument("--threshold", type=float, help="eigenvalue threshold η for 'fixed' and 'adaptive' (default 500)")
    g.add_argument("--threshold-fraction", type=float, help="η / λ_max for 'lanczos' (default 0.01)")
    g.add_argument("--lanczos-steps", type=int, help="Krylov dimension for 'lanczos' and the range check (default 30)")
    g.add_argument("--power-steps", type=int, help="power iterations for |λ_max| with 'adaptive' (default 50)")
    _add_executor_args(p)
    p.add_argument("--quiet", action="store_true", help="no plan, estimate or progress bar")
    p.set_defaults(func=cmd_hessian)

    p = sub.add_parser("report", help="write one self-contained HTML report of one or several runs",
                       description="Write a single HTML file (figures inline, no network) with the run's "
                                   "configuration, loss and LLC with stages, per-head rLLC curves by cluster and "
                                   "type, drLLC per data set, the head table, composition, Hessian comparisons, "
                                   "clustering metrics and diagnostics warnings.")
    p.add_argument("run_dirs", nargs="+", help="run directories")
    p.add_argument("--out", help="HTML path (default: report.html in the first run directory)")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `rllc` console script."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except RllcError as e:
        print(f"rllc: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `rllc info RUN | head`: the reader left; not an error of ours (an OSError: first)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 0
    except OSError as e:  # a full or read-only disk the library did not name: still one line
        import errno

        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        where = f" {e.filename}" if e.filename else ""
        print(f"rllc: error: {e.strerror}:{where}; free space or make it writable, then run the same command "
              "again", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nrllc: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as e:  # numpy's MemoryError, torch's CPU allocator (a RuntimeError)
        if not isinstance(e, MemoryError) and "can't allocate memory" not in str(e):
            raise
        print("rllc: error: out of memory; ask for less at once (fewer samples, probes, chains or a smaller "
              "batch), then run the same command again", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
