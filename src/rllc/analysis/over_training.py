"""Every head measure over a run's checkpoints, stored beside the LLC results, plotted, and labelled.

`analyze_heads(run)` computes, at each selected checkpoint, the behavioural scores, ablation scores, ICL scores
and composition scores of every head, and at the last checkpoint (or every one, if asked) tokens in context,
head types and Dyck path patching; each value is a row of the run's results store (`rllc.load_results`), keyed
by a hash of the settings below, so a re-run computes only what is missing. `heads_command` is what
`rllc heads RUN_DIR` calls: it also writes the PNGs, the tokens-in-context HTML and the labelled table.

Measures (component "l:h" unless noted; data is the held-out text spec unless noted):
  prev_token_score, current_token_score; induction_score (data "repeated_random"); prefix_matching_score (data
  "repeated_random": Olsson et al.'s, a random sequence repeated twice); ablation_zero, ablation_mean,
  ablation_resample (nats); icl_score (component "all": the model; "l:h": the model with that head mean-ablated;
  the loss at token 31 minus token 3 of 64, the paper's 500 − 50 of 1024 scaled, mean over `n_icl` windows, std
  column = its standard error); q_composition, k_composition, v_composition
  (component "0:i->1:j", data "weights"; component "random" holds the Gaussian baseline and its std);
  tic_frac_{induction,dyck,skip_ngram,ngram,unexplained}, tic_unique_multigrams; head_type (value: confidence,
  extra: label and evidence); path_patching_nested, path_patching_unnested (data "synthetic.dyck", component
  "0:i->1:j" for one sender or "layer0->1:j" for all heads below the receiver: loss increase in nats).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from rllc._errors import RllcError
from rllc.analysis.ablation import KINDS, ablated_per_token_loss, head_z_means, per_token_loss
from rllc.analysis.composition import MODES, composition_baseline, composition_scores
from rllc.analysis.head_types import HeadTypeThresholds, label_heads
from rllc.analysis.patching import dyck_path_patching
from rllc.analysis.scores import (
    _diagonal_score,
    attention_patterns,
    icl_positions,
    icl_score_se,
    induction_scores,
    prefix_matching_scores,
    text_part,
)
from rllc.analysis.token_contexts import (
    CLASSES,
    BracketVocab,
    TokensInContextConfig,
    render_tokens_in_context_html,
    tokens_in_context,
    tokens_in_context_summary,
)
from rllc.model.adapters import adapt
from rllc.model.components import head_index, is_head_name
from rllc.sweep.store import ResultRow, ResultStore, config_hash
from rllc.train.run import Run, load_run

ANALYSIS_VERSION = 2  # bump when a measure's definition changes, so old rows are not reused


@dataclass(frozen=True)
class HeadAnalysisConfig:
    """Settings of the head analysis. Defaults fit the `cpu` demo (vocab 2048, n_ctx 64) in ~1-2 min on 2 cores.

    For the paper's tokens-in-context values use `tic=TokensInContextConfig.paper()` (100k samples, top 1k).
    """

    n_text: int = 32  # held-out windows for attention and ablation scores
    n_icl: int = 256  # held-out windows the ICL scores average over (their standard error is stored)
    n_repeated: int = 16  # sequences per period for the induction score and for prefix matching
    composition_baseline_samples: int = 200
    max_checkpoints: int = 16  # when no steps are given: this many checkpoints, evenly spaced in log(step)
    tic: TokensInContextConfig = field(default_factory=lambda: TokensInContextConfig(n_samples=128, top_k=100))
    tic_steps: str = "last"  # "last" or "all": where tokens in context, head types and path patching are computed
    patching_n: int = 32  # synthetic dyck sequences for path patching
    thresholds: HeadTypeThresholds = field(default_factory=HeadTypeThresholds)
    text: str | None = None  # data spec of the held-out text; default: the text parts of the run's data
    seed: int = 0

    def __post_init__(self) -> None:
        if self.tic_steps not in ("last", "all"):
            raise RllcError(f"tic_steps {self.tic_steps!r} must be 'last' or 'all'")
        if self.n_text < 2 or self.n_icl < 2 or self.n_repeated < 1 or self.max_checkpoints < 1:
            raise RllcError("n_text and n_icl must be >= 2 and n_repeated, max_checkpoints >= 1")


@dataclass
class HeadAnalysis:
    """What `analyze_heads` produced (read back from the store, so complete on a re-run too).

    Attributes:
        results: long-form rows of every head measure at the analysed steps (the store's columns).
        table: the labelled head table at the last analysed step (one row per head: scores, ablations,
            tokens-in-context shares, label, confidence, evidence).
        examples: tokens in context at the last step (one row per example), or None if loaded from the store.
        patching: Dyck path patching at the last step (receiver, senders, subset, increases).
        steps: the analysed steps; computed: number of rows written now.
    """

    run_dir: Path
    results: pd.DataFrame
    table: pd.DataFrame
    examples: pd.DataFrame | None
    patching: pd.DataFrame
    steps: list[int]
    computed: int = 0
    files: list[Path] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)


def select_steps(steps: Sequence[int], n: int) -> list[int]:
    """At most n of the steps, evenly spaced in log(1 + step), always keeping the first and the last."""
    steps = sorted(steps)
    if len(steps) <= n:
        return steps
    logs = np.log1p(np.asarray(steps, dtype=float))
    targets = np.linspace(logs[0], logs[-1], n)
    picked = {steps[int(np.abs(logs - t).argmin())] for t in targets} | {steps[0], steps[-1]}
    return sorted(picked)


def _hashes(cfg: HeadAnalysisConfig, text: str) -> dict[str, str]:
    base = {"version": ANALYSIS_VERSION, "seed": cfg.seed}
    return {
        "scores": config_hash({**base, "group": "scores", "n_text": cfg.n_text, "n_repeated": cfg.n_repeated,
                               "n_icl": cfg.n_icl, "text": text}),
        "composition": config_hash({**base, "group": "composition", "n": cfg.composition_baseline_samples}),
        "tic": config_hash({**base, "group": "tic", "tic": dataclasses.asdict(cfg.tic), "text": text,
                            "thresholds": dataclasses.asdict(cfg.thresholds)}),
        "patching": config_hash({**base, "group": "patching", "n": cfg.patching_n}),
    }


@torch.no_grad()
def _score_rows(model, tokens: torch.Tensor, step: int, text: str, chash: str, cfg: HeadAnalysisConfig,
                icl_tokens: torch.Tensor | None = None) -> list[ResultRow]:
    """Attention, induction, prefix-matching, ablation and ICL scores of every head at one step.

    `icl_tokens` (n_icl, n_ctx): the windows the ICL scores average over (default: `tokens`)."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    icl_tokens = tokens if icl_tokens is None else icl_tokens
    pats = attention_patterns(model, tokens)
    vals = {("prev_token_score", text): _diagonal_score(pats, 1), ("current_token_score", text): _diagonal_score(pats, 0),
            ("induction_score", "repeated_random"): induction_scores(model, n=cfg.n_repeated, seed=cfg.seed),
            ("prefix_matching_score", "repeated_random"): prefix_matching_scores(model, n=cfg.n_repeated,
                                                                                 seed=cfg.seed)}
    del pats
    clean = per_token_loss(model, tokens)  # (B, T - 1)
    means = head_z_means(model, tokens)
    for kind in KINDS:
        out = torch.zeros(L, H)
        for l in range(L):
            for h in range(H):
                loss = ablated_per_token_loss(model, tokens, [(l, h)], kind, means=means, seed=cfg.seed)
                out[l, h] = loss.mean() - clean.mean()
        vals[(f"ablation_{kind}", text)] = out
    rows = [ResultRow(step, f"{l}:{h}", data, measure, chash, float(v[l, h]))
            for (measure, data), v in vals.items() for l in range(L) for h in range(H)]
    late, early = icl_positions(icl_tokens.shape[1])
    info = {"n_windows": int(icl_tokens.shape[0]), "late": late, "early": early}
    for l in range(L):
        for h in range(H):
            m, se = icl_score_se(ablated_per_token_loss(model, icl_tokens, [(l, h)], "mean", means=means,
                                                        seed=cfg.seed))
            rows.append(ResultRow(step, f"{l}:{h}", text, "icl_score", chash, m, se, extra=info))
    m, se = icl_score_se(per_token_loss(model, icl_tokens))
    rows.append(ResultRow(step, "all", text, "icl_score", chash, m, se, extra=info))
    return rows


def _composition_rows(model, step: int, chash: str, baselines: dict[str, tuple[float, float]]) -> list[ResultRow]:
    rows = []
    cfg = model.cfg
    for mode in MODES:
        base, std = baselines[mode]
        rows.append(ResultRow(step, "random", "weights", f"{mode}_composition", chash, base, std))
        for ls in range(cfg.n_layers):
            for lr in range(ls + 1, cfg.n_layers):
                s = composition_scores(model, mode, sender_layer=ls, receiver_layer=lr)
                rows += [ResultRow(step, f"{ls}:{i}->{lr}:{j}", "weights", f"{mode}_composition", chash,
                                   None if math.isnan(float(s[i, j])) else float(s[i, j]),
                                   valid=not math.isnan(float(s[i, j])))
                         for i in range(cfg.n_heads) for j in range(cfg.n_heads)]
    return rows


def _patching_rows(model, run: Run, step: int, chash: str, cfg: HeadAnalysisConfig) -> list[ResultRow]:
    from rllc.data import synthetic_config_for

    if "blocks.1.hook_q_input" not in adapt(model).hook_names:
        return []  # this family computes one LayerNorm for Q, K and V: no separate paths to patch
    synth = synthetic_config_for("synthetic.dyck", run.tokenizer, seed=run.config.train.seed)
    mc = model.cfg
    rows, cache = [], {}
    for lr in range(1, mc.n_layers):
        for j in range(mc.n_heads):
            sender_sets = {f"{lr - 1}:{i}->{lr}:{j}": [(lr - 1, i)] for i in range(mc.n_heads)}
            sender_sets[f"layer{lr - 1}->{lr}:{j}"] = [(l, i) for l in range(lr) for i in range(mc.n_heads)]
            for comp, senders in sender_sets.items():
                df = dyck_path_patching(model, synth, senders, (lr, j), n=cfg.patching_n, seed=cfg.seed,
                                        cache=cache).set_index("subset")
                for subset in ("nested", "unnested"):
                    r = df.loc[subset]
                    ok = r.n_positions > 0
                    rows.append(ResultRow(step, comp, "synthetic.dyck", f"path_patching_{subset}", chash,
                                          float(r.path_increase) if ok else None, valid=bool(ok),
                                          extra={"n_positions": int(r.n_positions),
                                                 "full_increase": float(r.full_increase) if ok else None}))
    return rows


def _tic_rows(model, tokens: torch.Tensor, brackets: BracketVocab, step: int, text: str, chash: str,
              cfg: HeadAnalysisConfig, score_frame: pd.DataFrame) -> tuple[list[ResultRow], pd.DataFrame]:
    ex = tokens_in_context(model, tokens, config=cfg.tic, brackets=brackets)
    summ = tokens_in_context_summary(ex)
    labels = label_heads(score_frame, summ, cfg.thresholds)
    rows = []
    for _, s in summ.iterrows():
        top = ex[ex.component == s.component].head(20)
        examples = [{"tokens": r.tokens, "attention": [round(a, 4) for a in r.attention], "label": r.label,
                     "loss_increase": round(float(r.loss_increase), 4), "pos": int(r.pos)} for r in top.itertuples()]
        for c in CLASSES:
            rows.append(ResultRow(step, s.component, text, f"tic_frac_{c}", chash, float(s[f"frac_{c}"]),
                                  extra={"unique": int(s[f"unique_{c}"]), "count": int(s[f"count_{c}"]), "n": int(s.n)}))
        rows.append(ResultRow(step, s.component, text, "tic_unique_multigrams", chash, float(s.unique_multigrams),
                              extra={"tic_class": s.tic_class, "examples": examples}))
    for _, r in labels.iterrows():
        rows.append(ResultRow(step, r.component, text, "head_type", chash, float(r.confidence),
                              extra={"label": r.label, "family": r.family, "evidence": r.evidence}))
    return rows, ex


def _wide(results: pd.DataFrame, step: int) -> pd.DataFrame:
    """Per-head wide table at one step from the long-form results (head components only)."""
    r = results[(results.step == step) & results.component.map(is_head_name).astype(bool)]
    t = r.pivot_table(index="component", columns="measure", values="value", aggfunc="first").reset_index()
    t.columns.name = None
    t.insert(1, "layer", [head_index(c)[0] for c in t.component])
    t.insert(2, "head", [head_index(c)[1] for c in t.component])
    return t.sort_values(["layer", "head"]).reset_index(drop=True)


def analyze_heads(
    run: Run | str | Path, steps: Sequence[int] | None = None, *, config: HeadAnalysisConfig = HeadAnalysisConfig(),
    progress: Callable[[str], None] | None = None,
) -> HeadAnalysis:
    """Compute and store every head measure over a run's checkpoints; label the heads at the last step.

    Args:
        run: a Run or run directory.
        steps: checkpoint steps (default: `config.max_checkpoints` of them, log-spaced, first and last kept).
        config: the analysis settings (their hash keys the stored rows).
        progress: called with one line per checkpoint (e.g. `print`), or None.
    Returns:
        HeadAnalysis (results frame, labelled table at the last step, tokens in context, path patching).
    """
    run = run if isinstance(run, Run) else load_run(run)
    if not run.steps:
        raise RllcError(f"run {run.path} has no checkpoints yet; train it first")
    steps = sorted(set(steps)) if steps is not None else select_steps(run.steps, config.max_checkpoints)
    for s in steps:
        run._check_step(s)
    text = config.text or text_part(run.config.train.data)
    hashes = _hashes(config, text)
    store = ResultStore(run.path)
    for group, h in hashes.items():
        store.put_config(h, {"analysis": "heads", "group": group, **json.loads(json.dumps(dataclasses.asdict(config),
                                                                                        default=str))})
    gen = torch.Generator().manual_seed(config.seed)
    text_tokens = run.dataset(text, split="val").sample_batch(config.n_text, gen)  # (n_text, n_ctx)
    icl_tokens = run.dataset(text, split="val").sample_batch(config.n_icl, gen)  # (n_icl, n_ctx)
    tic_data = run.dataset(text, split="val")
    mc = run.config.model
    heads = [f"{l}:{h}" for l in range(mc.n_layers) for h in range(mc.n_heads)]
    done = store.done_keys()
    baselines: dict[str, tuple[float, float]] = {}
    tic_steps = set(steps) if config.tic_steps == "all" else {steps[-1]}
    computed, examples = 0, None
    for step in steps:
        t0 = time.perf_counter()
        want = lambda measure, comps, data, group: any(  # noqa: E731
            (step, c, data, measure, hashes[group]) not in done for c in comps)
        model, rows = None, []
        get_model = lambda: model if model is not None else adapt(run.model_at(step))  # noqa: E731
        if want("ablation_resample", heads, text, "scores") or want("icl_score", ["all"], text, "scores"):
            model = get_model()
            rows += _score_rows(model, text_tokens, step, text, hashes["scores"], config, icl_tokens)
        if mc.n_layers >= 2 and want("k_composition", ["random"], "weights", "composition"):
            model = get_model()
            if not baselines:
                baselines = {m: composition_baseline(mc.d_model, mc.d_head, m, n=config.composition_baseline_samples,
                                                     seed=config.seed) for m in MODES}
            rows += _composition_rows(model, step, hashes["composition"], baselines)
        if step in tic_steps:
            if mc.n_layers >= 2 and want("path_patching_nested", [f"layer0->1:{j}" for j in range(mc.n_heads)],
                                         "synthetic.dyck", "patching"):
                model = get_model()
                rows += _patching_rows(model, run, step, hashes["patching"], config)
            if want("head_type", heads, text, "tic"):
                model = get_model()
                computed += store.put_many(rows)
                rows = []
                done = store.done_keys()
                frame = store.frame()
                score_frame = _wide(frame[frame.config_hash == hashes["scores"]], step)
                tic_tokens = tic_data.sample_batch(config.tic.n_samples, torch.Generator().manual_seed(config.seed))
                tic_rows, examples = _tic_rows(model, tic_tokens, BracketVocab.from_tokenizer(run.tokenizer), step,
                                               text, hashes["tic"], config, score_frame)
                rows += tic_rows
        computed += store.put_many(rows)
        if progress is not None:
            progress(f"step {step}: {len(rows)} rows computed in {time.perf_counter() - t0:.1f} s"
                     if rows else f"step {step}: all stored")
    frame = store.frame(with_extra=True)
    frame = frame[frame.config_hash.isin(hashes.values()) & frame.step.isin(steps)].reset_index(drop=True)
    last = steps[-1]
    table = _wide(frame, last)
    types = frame[(frame.step == last) & (frame.measure == "head_type")]
    if len(types):
        info = pd.DataFrame([{"component": c, **e} for c, e in zip(types.component, types.extra)])
        table = table.drop(columns=["head_type"]).merge(info, on="component", how="left")
        table = table.rename(columns={}).assign(confidence=table.component.map(dict(zip(types.component, types.value))))
    patch = frame[(frame.step == last) & frame.measure.str.startswith("path_patching")]
    patching = patch.pivot_table(index="component", columns="measure", values="value").reset_index() if len(patch) \
        else pd.DataFrame()
    return HeadAnalysis(run.path, frame.drop(columns=["extra"]), table, examples, patching, steps, computed)


# ------------------------------------------------------------------------------------------------------ figures


def _curves(results: pd.DataFrame, measures: Sequence[str], path: Path, title: str, *, baseline: bool = False,
            components: Callable[[str], bool] | None = None) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measures = [m for m in measures if m in set(results.measure)]
    if not measures:
        return None
    fig, axes = plt.subplots(1, len(measures), figsize=(4.2 * len(measures), 3.6), dpi=110, squeeze=False)
    for ax, m in zip(axes[0], measures):
        d = results[results.measure == m].sort_values("step")
        for comp, g in d.groupby("component", sort=True):
            if comp == "random":
                ax.plot(g.step.clip(lower=1), g.value, "k--", lw=1.5, label="random baseline")
                continue
            if components is not None and not components(comp):
                continue
            ax.plot(g.step.clip(lower=1), g.value, lw=1.1, label=comp)
        ax.set_xscale("log")
        ax.set_xlabel("training step")
        ax.set_title(m.replace("_", " "), fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=6, ncol=2)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _heatmaps(results: pd.DataFrame, step: int, n_heads: int, path: Path, title: str) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = results[(results.step == step) & results.measure.str.endswith("_composition")]
    if d.empty:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), dpi=110)
    for ax, mode in zip(axes, MODES):
        g = d[(d.measure == f"{mode}_composition") & d.component.str.startswith("0:") & d.component.str.contains("->1:")]
        mat = np.full((n_heads, n_heads), np.nan)
        for comp, v in zip(g.component, g.value):
            s, r = comp.split("->")
            mat[int(s.split(":")[1]), int(r.split(":")[1])] = v
        base = d[(d.measure == f"{mode}_composition") & (d.component == "random")].value
        im = ax.imshow(mat, cmap="viridis", vmin=0)
        ax.set_xlabel("layer-1 head (receiver)")
        ax.set_ylabel("layer-0 head (sender)")
        ax.set_title(f"{mode.upper()}-composition (random baseline {float(base.iloc[0]) if len(base) else float('nan'):.3f})",
                     fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def heads_command(run_dir: str | Path, steps: Sequence[int] | None = None, *,
                  config: HeadAnalysisConfig = HeadAnalysisConfig(), out_dir: str | Path | None = None,
                  progress: Callable[[str], None] | None = None) -> HeadAnalysis:
    """`rllc heads RUN_DIR [--steps ...]`: compute and store all head measures, write figures, HTML and tables.

    Writes into `out_dir` (default RUN_DIR/heads): head_types.csv (labelled table at the last step),
    head_measures.csv (long form, every analysed step), path_patching.csv, head_scores.png, ablation_scores.png,
    composition_heatmaps.png, composition_over_training.png, tokens_in_context.html.
    Returns:
        HeadAnalysis with `.files` and `.summary` (lines for the CLI to print after `.table`). Prints nothing
        itself except through `progress`.
    """
    result = analyze_heads(run_dir, steps, config=config, progress=progress)
    out = Path(out_dir) if out_dir is not None else result.run_dir / "heads"
    out.mkdir(parents=True, exist_ok=True)
    name, res, last = result.run_dir.name, result.results, result.steps[-1]
    files = [out / "head_types.csv", out / "head_measures.csv"]
    result.table.to_csv(files[0], index=False)
    res.to_csv(files[1], index=False)
    if len(result.patching):
        result.patching.to_csv(out / "path_patching.csv", index=False)
        files.append(out / "path_patching.csv")
    heads_only = is_head_name
    figs = [
        _curves(res, ["prev_token_score", "current_token_score", "induction_score", "prefix_matching_score",
                      "icl_score"], out / "head_scores.png", f"{name}: head scores over training "
                "(icl_score: model with the head mean-ablated; 'all': intact)",
                components=lambda c: heads_only(c) or c == "all"),
        _curves(res, [f"ablation_{k}" for k in KINDS], out / "ablation_scores.png",
                f"{name}: ablation scores (loss increase, nats) over training", components=heads_only),
        _heatmaps(res, last, int(result.table["head"].max()) + 1 if len(result.table) else 0,
                  out / "composition_heatmaps.png", f"{name}: composition scores at step {last}"),
        _curves(res, [f"{m}_composition" for m in MODES], out / "composition_over_training.png",
                f"{name}: composition scores over training (layer 0 -> layer 1)", components=lambda c: "->" in c),
    ]
    files += [f for f in figs if f is not None]
    html_path = _write_tic_html(result, out / "tokens_in_context.html")
    if html_path is not None:
        files.append(html_path)
    result.files = files
    t = result.table
    result.summary = [f"{name}: {len(result.steps)} checkpoints analysed ({result.steps[0]}..{last}); "
                      f"{result.computed} new rows in {result.run_dir / 'results.sqlite'}"]
    if "label" in t:
        for lab, g in t.groupby("label"):
            result.summary.append(f"{lab}: {', '.join(g.component)}")
    result.summary.append(f"outputs: {out}")
    return result


def _write_tic_html(result: HeadAnalysis, path: Path) -> Path | None:
    run = load_run(result.run_dir)
    ex = result.examples
    if ex is None:  # rebuild the stored top examples
        from rllc.sweep.store import ResultStore

        frame = ResultStore(result.run_dir).frame(with_extra=True)
        rows = frame[(frame.step == result.steps[-1]) & (frame.measure == "tic_unique_multigrams")]
        if rows.empty:
            return None
        ex = pd.DataFrame([{"component": c, **e} for c, x in zip(rows.component, rows.extra)
                           for e in x.get("examples", [])])
        if ex.empty:
            return None
        ex["pattern"] = ""
    tok = run.tokenizer
    return render_tokens_in_context_html(ex, path, lambda i: tok.decode([int(i)]),
                                         title=f"{result.run_dir.name}: tokens in context at step {result.steps[-1]}")
