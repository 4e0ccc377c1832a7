"""Every head measure over a run's checkpoints, stored beside the LLC results, plotted, and labelled.

`analyze_heads(run)` computes, at each selected checkpoint, the behavioural scores, ablation scores, ICL scores
and composition scores of every head, and at the last checkpoint (or every one, if asked) tokens in context,
head types and Dyck path patching; each value is a row of the run's results store (`rllc.load_results`), keyed
by a hash of the settings below. Each family of measures is a function of the pipeline (`rllc.pipeline`,
registered in `rllc/pipeline/measures.py`): `plan_heads` plans them as jobs, the driver skips what is stored
(per measure and settings, so a measure added later is computed on runs analysed before), runs the rest on any
executor and alone writes the rows. `heads_command` is what `rllc heads RUN_DIR` calls: it also writes the
PNGs, the tokens-in-context HTML and the labelled table.

Measures (component "l:h" unless noted; data is the held-out text spec unless noted):
  prev_token_score, current_token_score; induction_score (data "repeated_random"); prefix_matching_score (data
  "repeated_random": Olsson et al.'s, a random sequence repeated twice); ablation_zero, ablation_mean,
  ablation_resample (nats); icl_score (component "all": the model; "l:h": the model with that head mean-ablated;
  the loss at token 31 minus token 3 of 64, the paper's 500 − 50 of 1024 scaled, mean over `n_icl` windows, std
  column = its standard error); q_composition, k_composition, v_composition
  (component "0:i->1:j", data "weights"; component "random" holds the Gaussian baseline and its std);
  tic_frac_{induction,dyck,skip_ngram,ngram,unexplained}, tic_unique_multigrams; head_type (value: confidence,
  extra: label and evidence); path_patching_nested, path_patching_unnested (data "synthetic.dyck", component
  "0:i->1:j" for one sender or "layer0->1:j" for all heads below the receiver: loss increase in nats, std
  column = its standard error over the bracket closings).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

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
from rllc.pipeline.driver import RunResult
from rllc.pipeline.jobs import Plan
from rllc.pipeline.store import ResultRow, ResultStore, config_hash
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
        examples: None (the stored top examples per head are in the `tic_unique_multigrams` rows' extras).
        patching: Dyck path patching at the last step (receiver, senders, subset, increases).
        steps: the analysed steps; computed: number of rows written now; run: the pipeline's `RunResult`.
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
    run: RunResult | None = None


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


# Pipeline families of the head analysis: (family, settings group, data set, where computed). "text" is the
# held-out text spec; "tic" steps are the last analysed checkpoint (or every one with tic_steps="all").
FAMILIES = [
    ("attention_scores", "scores", "text", "all"),
    ("induction_score", "scores", "repeated_random", "all"),
    ("prefix_matching_score", "scores", "repeated_random", "all"),
    ("ablation", "scores", "text", "all"),
    ("composition", "composition", "weights", "all"),
    ("path_patching", "patching", "synthetic.dyck", "tic"),
    ("tokens_in_context", "tic", "text", "tic"),
]


def _components(family: str, mc) -> list[str]:  # noqa: ANN001 - ModelConfig
    L, H = mc.n_layers, mc.n_heads
    heads = [f"{l}:{h}" for l in range(L) for h in range(H)]
    if family == "ablation":
        return [*heads, "all"]  # "all": the intact model's ICL score
    if family == "composition":
        return ["random"] + [f"{ls}:{i}->{lr}:{j}" for ls in range(L) for lr in range(ls + 1, L)
                             for i in range(H) for j in range(H)]
    if family == "path_patching":
        return [c for lr in range(1, L) for j in range(H)
                for c in [*(f"{lr - 1}:{i}->{lr}:{j}" for i in range(H)), f"layer{lr - 1}->{lr}:{j}"]]
    return heads


def plan_heads(run: Run | str | Path, steps: str | Sequence[int] | None = None, *,
               config: HeadAnalysisConfig = HeadAnalysisConfig()) -> Plan:
    """Plan every head measure at the chosen checkpoints (validates; computes nothing).

    Args:
        run: a Run or run directory.
        steps: a step spec as for `rllc sweep` ("all", "last", "log:N", "S1,S2", a list); default
            f"log:{config.max_checkpoints}" (log-spaced, first and last kept).
        config: the analysis settings (their hashes key the stored rows).

    Returns:
        A `rllc.pipeline.Plan`: per checkpoint one task per family in `FAMILIES` (composition and path patching
        need two layers or more).
    """
    from rllc.pipeline import data_key, plan_family, select_steps
    from rllc.pipeline.jobs import require_writable, stored_keys

    run = run if isinstance(run, Run) else load_run(run)
    if not run.steps:
        raise RllcError(f"run {run.path} has no checkpoints yet; train it first")
    require_writable(run.path)
    chosen = select_steps(f"log:{config.max_checkpoints}" if steps is None else steps, run.steps, str(run.path))
    text = data_key(run, config.text or text_part(run.config.train.data))  # keyed by what it resolves to
    hashes = _hashes(config, text.key)
    mc = run.config.model
    settings = {"analysis": dataclasses.asdict(config), "text": text.key, "text_spec": text.spec,
                "score_hash": hashes["scores"]}
    record = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    tic_steps = chosen if config.tic_steps == "all" else [chosen[-1]]
    done = stored_keys(Path(run.path).absolute())
    plan = Plan()
    for family, group, data, where in FAMILIES:
        if family in ("composition", "path_patching") and mc.n_layers < 2:
            continue
        keys = (text.key, text.spec) if data == "text" else (data, data)
        plan = plan + plan_family(run.path, family, steps=chosen if where == "all" else tic_steps,
                                  components=_components(family, mc), data=[keys], settings=settings,
                                  config_hash=hashes[group], record={"analysis": "heads", "group": group, **record},
                                  done=done)
    order = {f: i for i, (f, *_) in enumerate(FAMILIES)}
    plan.tasks.sort(key=lambda t: (t.step, order[t.family]))  # a checkpoint's tasks in a row: one model load
    return plan


# ------------------------------------------------------------------------------------------------ the measures


def _config(task) -> HeadAnalysisConfig:  # noqa: ANN001 - Task
    d = dict(task.settings["analysis"])
    return HeadAnalysisConfig(**{**d, "tic": TokensInContextConfig(**d["tic"]),
                                 "thresholds": HeadTypeThresholds(**d["thresholds"])})


def _text_tokens(ctx, cfg: HeadAnalysisConfig, text: str) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    """The held-out windows every text score is measured on, (n_text, n_ctx), and those the ICL scores average
    over, (n_icl, n_ctx), drawn in that order from one generator (`text`: a resolvable spec)."""
    def draw() -> tuple[torch.Tensor, torch.Tensor]:
        data, gen = ctx.run.dataset(text, split="val"), torch.Generator().manual_seed(cfg.seed)
        return data.sample_batch(cfg.n_text, gen), data.sample_batch(cfg.n_icl, gen)

    return ctx.cached(("text", text, cfg.n_text, cfg.n_icl, cfg.seed), draw, keep=2)


def _head_rows(task, measure: str, values: torch.Tensor) -> list[ResultRow]:  # noqa: ANN001
    L, H = values.shape
    return [ResultRow(task.step, f"{l}:{h}", task.data, measure, task.config_hash, float(values[l, h]))
            for l in range(L) for h in range(H)]


@torch.no_grad()
def attention_rows(ctx, task) -> list[ResultRow]:  # noqa: ANN001 - (TaskContext, Task)
    """Previous-token and current-token scores of every head on the held-out text."""
    cfg = _config(task)
    pats = attention_patterns(adapt(ctx.model), _text_tokens(ctx, cfg, task.data_spec)[0])
    return _head_rows(task, "prev_token_score", _diagonal_score(pats, 1)) + \
        _head_rows(task, "current_token_score", _diagonal_score(pats, 0))


@torch.no_grad()
def induction_rows(ctx, task) -> list[ResultRow]:  # noqa: ANN001
    """Induction score of every head on repeated random sequences."""
    cfg = _config(task)
    return _head_rows(task, "induction_score", induction_scores(adapt(ctx.model), n=cfg.n_repeated, seed=cfg.seed))


@torch.no_grad()
def prefix_matching_rows(ctx, task) -> list[ResultRow]:  # noqa: ANN001
    """Prefix-matching score of every head."""
    cfg = _config(task)
    return _head_rows(task, "prefix_matching_score", prefix_matching_scores(adapt(ctx.model), n=cfg.n_repeated,
                                                                            seed=cfg.seed))


@torch.no_grad()
def ablation_rows(ctx, task) -> list[ResultRow]:  # noqa: ANN001
    """Zero, mean and resample ablation scores (loss increase, nats) of every head, and ICL scores: of the model
    with each head mean-ablated, and of the intact model (component "all")."""
    cfg = _config(task)
    model = adapt(ctx.model)
    tokens, icl_tokens = _text_tokens(ctx, cfg, task.data_spec)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    clean = per_token_loss(model, tokens)  # (B, T - 1)
    means = head_z_means(model, tokens)
    rows = []
    for kind in KINDS:
        out = torch.zeros(L, H)
        for l in range(L):
            for h in range(H):
                loss = ablated_per_token_loss(model, tokens, [(l, h)], kind, means=means, seed=cfg.seed)
                out[l, h] = loss.mean() - clean.mean()
        rows += _head_rows(task, f"ablation_{kind}", out)
    late, early = icl_positions(icl_tokens.shape[1])
    info = {"n_windows": int(icl_tokens.shape[0]), "late": late, "early": early}
    for l in range(L):
        for h in range(H):
            m, se = icl_score_se(ablated_per_token_loss(model, icl_tokens, [(l, h)], "mean", means=means,
                                                        seed=cfg.seed))
            rows.append(ResultRow(task.step, f"{l}:{h}", task.data, "icl_score", task.config_hash, m, se, extra=info))
    m, se = icl_score_se(per_token_loss(model, icl_tokens))
    rows.append(ResultRow(task.step, "all", task.data, "icl_score", task.config_hash, m, se, extra=info))
    return rows


def composition_rows(ctx, task) -> list[ResultRow]:  # noqa: ANN001
    """Q/K/V-composition of every head pair (sender layer < receiver layer) and the Gaussian baseline
    (component "random", std = its spread)."""
    cfg, model = _config(task), adapt(ctx.model)
    mc = model.cfg
    baselines = ctx.cached(("baselines", cfg.composition_baseline_samples, cfg.seed), lambda: {
        m: composition_baseline(mc.d_model, mc.d_head, m, n=cfg.composition_baseline_samples, seed=cfg.seed)
        for m in MODES})
    rows = []
    for mode in MODES:
        base, std = baselines[mode]
        rows.append(ResultRow(task.step, "random", task.data, f"{mode}_composition", task.config_hash, base, std))
        for ls in range(mc.n_layers):
            for lr in range(ls + 1, mc.n_layers):
                s = composition_scores(model, mode, sender_layer=ls, receiver_layer=lr)
                rows += [ResultRow(task.step, f"{ls}:{i}->{lr}:{j}", task.data, f"{mode}_composition",
                                   task.config_hash, None if math.isnan(float(s[i, j])) else float(s[i, j]),
                                   valid=not math.isnan(float(s[i, j])))
                         for i in range(mc.n_heads) for j in range(mc.n_heads)]
    return rows


def patching_rows(ctx, task) -> list[ResultRow]:  # noqa: ANN001
    """Dyck path patching: the loss increase (nats) on nested and unnested brackets when the path from one
    sender ("0:i->1:j") or from every head below the receiver ("layer0->1:j") to the receiver is patched."""
    from rllc.data import synthetic_config_for

    cfg, model, run = _config(task), adapt(ctx.model), ctx.run
    if "blocks.1.hook_q_input" not in adapt(model).hook_names:
        return []  # this family computes one LayerNorm for Q, K and V: no separate paths to patch
    synth = synthetic_config_for("synthetic.dyck", run.tokenizer, seed=run.config.train.seed)
    mc = model.cfg
    rows, cache = [], {}
    wanted = set(task.components)
    for lr in range(1, mc.n_layers):
        for j in range(mc.n_heads):
            sender_sets = {f"{lr - 1}:{i}->{lr}:{j}": [(lr - 1, i)] for i in range(mc.n_heads)}
            sender_sets[f"layer{lr - 1}->{lr}:{j}"] = [(l, i) for l in range(lr) for i in range(mc.n_heads)]
            for comp, senders in sender_sets.items():
                if comp not in wanted:
                    continue
                df = dyck_path_patching(model, synth, senders, (lr, j), n=cfg.patching_n, seed=cfg.seed,
                                        cache=cache).set_index("subset")
                for subset in ("nested", "unnested"):
                    r = df.loc[subset]
                    ok = r.n_positions > 0
                    se = float(r.path_increase_se) if ok and math.isfinite(r.path_increase_se) else None
                    rows.append(ResultRow(task.step, comp, task.data, f"path_patching_{subset}", task.config_hash,
                                          float(r.path_increase) if ok else None, se, valid=bool(ok),
                                          extra={"n_positions": int(r.n_positions),
                                                 "full_increase": float(r.full_increase) if ok else None}))
    return rows


def _score_frame(ctx, task, cfg: HeadAnalysisConfig) -> pd.DataFrame:  # noqa: ANN001
    """The per-head attention and induction scores at the task's step that head types are labelled from: read
    from the store when it holds them (the scores tasks ran first), else computed here (same values)."""
    need = {"prev_token_score", "current_token_score", "induction_score"}
    h = task.settings["score_hash"]
    frame = ResultStore(task.run_dir).frame()
    frame = frame[(frame.config_hash == h) & (frame.step == task.step) & frame.measure.isin(need)]
    wide = _wide(frame, task.step) if len(frame) else pd.DataFrame()
    n_heads = adapt(ctx.model).cfg.n_layers * adapt(ctx.model).cfg.n_heads
    if len(wide) == n_heads and need <= set(wide.columns) and wide[sorted(need)].notna().all().all():
        return wide
    text = replace(task, data=task.settings["text"], spec=task.settings["text_spec"])
    rows = attention_rows(ctx, text) + induction_rows(ctx, replace(task, data="repeated_random", spec=""))
    return _wide(pd.DataFrame([dataclasses.asdict(r) for r in rows]), task.step)


def tic_rows(ctx, task) -> list[ResultRow]:  # noqa: ANN001
    """Tokens in context of every head (class shares, unique multigrams, top examples) and the automatic head
    types (value: confidence; extra: label, family, evidence)."""
    cfg, model, run = _config(task), adapt(ctx.model), ctx.run
    score_frame = _score_frame(ctx, task, cfg)
    tokens = run.dataset(task.data_spec, split="val").sample_batch(cfg.tic.n_samples,
                                                              torch.Generator().manual_seed(cfg.seed))
    ex = tokens_in_context(model, tokens, config=cfg.tic, brackets=BracketVocab.from_tokenizer(run.tokenizer))
    summ = tokens_in_context_summary(ex)
    labels = label_heads(score_frame, summ, cfg.thresholds)
    rows, step, text, chash = [], task.step, task.data, task.config_hash
    for _, s in summ.iterrows():
        top = ex[ex.component == s.component].head(20)
        examples = [{"tokens": r.tokens, "attention": [round(a, 4) for a in r.attention], "label": r.label,
                     "pattern": r.pattern, "loss_increase": round(float(r.loss_increase), 4), "pos": int(r.pos)}
                    for r in top.itertuples()]
        for c in CLASSES:
            rows.append(ResultRow(step, s.component, text, f"tic_frac_{c}", chash, float(s[f"frac_{c}"]),
                                  extra={"unique": int(s[f"unique_{c}"]), "count": int(s[f"count_{c}"]), "n": int(s.n)}))
        rows.append(ResultRow(step, s.component, text, "tic_unique_multigrams", chash, float(s.unique_multigrams),
                              extra={"tic_class": s.tic_class, "examples": examples}))
    for _, r in labels.iterrows():
        rows.append(ResultRow(step, r.component, text, "head_type", chash, float(r.confidence),
                              extra={"label": r.label, "family": r.family, "evidence": r.evidence}))
    return rows


# ------------------------------------------------------------------------------------------------ the analysis


def _wide(results: pd.DataFrame, step: int) -> pd.DataFrame:
    """Per-head wide table at one step from the long-form results (head components only)."""
    r = results[(results.step == step) & results.component.map(is_head_name).astype(bool)]
    t = r.pivot_table(index="component", columns="measure", values="value", aggfunc="first").reset_index()
    t.columns.name = None
    t.insert(1, "layer", [head_index(c)[0] for c in t.component])
    t.insert(2, "head", [head_index(c)[1] for c in t.component])
    return t.sort_values(["layer", "head"]).reset_index(drop=True)


def analyze_heads(
    run: Run | str | Path, steps: str | Sequence[int] | None = None, *,
    config: HeadAnalysisConfig = HeadAnalysisConfig(), progress: bool = False, executor: str | Any = "inprocess",
    address: str | None = None, workers: int | None = None,
) -> HeadAnalysis:
    """Compute and store every head measure over a run's checkpoints; label the heads at the last step.

    Args:
        run: a Run or run directory.
        steps: a step spec ("all", "last", "log:N", "S1,S2", a list; default f"log:{config.max_checkpoints}").
        config: the analysis settings (their hash keys the stored rows).
        progress: print the plan and its measured duration, and a progress bar over tasks.
        executor, address, workers: where the tasks run, as for `rllc.sweep.run_sweep`.
    Returns:
        HeadAnalysis (results frame, labelled table at the last step, tokens in context, path patching).
    """
    from rllc.pipeline.driver import run_with

    run = run if isinstance(run, Run) else load_run(run)
    plan = plan_heads(run, steps, config=config)
    done = run_with(plan, executor, address=address, workers=workers, progress=progress,
                    table=lambda p: pd.DataFrame())
    steps = sorted({t.step for t in plan.tasks})
    hashes = {t.config_hash for t in plan.tasks}
    store = ResultStore(run.path)
    frame = store.frame(with_extra=True)
    frame = frame[frame.config_hash.isin(hashes) & frame.step.isin(steps)].reset_index(drop=True)
    last = steps[-1]
    table = _wide(frame, last)
    types = frame[(frame.step == last) & (frame.measure == "head_type")]
    if len(types):
        info = pd.DataFrame([{"component": c, **e} for c, e in zip(types.component, types.extra)])
        table = table.drop(columns=["head_type"]).merge(info, on="component", how="left")
        table = table.assign(confidence=table.component.map(dict(zip(types.component, types.value))))
    patch = frame[(frame.step == last) & frame.measure.str.startswith("path_patching")]
    patching = patch.pivot_table(index="component", columns="measure", values="value").reset_index() if len(patch) \
        else pd.DataFrame()
    return HeadAnalysis(run.path, frame.drop(columns=["extra"]), table, None, patching, steps, done.rows, run=done)


# ------------------------------------------------------------------------------------------------------ figures


def _curves(results: pd.DataFrame, measures: Sequence[str], path: Path, title: str, *, baseline: bool = False,
            components: Callable[[str], bool] | None = None) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measures = [m for m in measures if m in set(results.measure)]
    if not measures:
        return None
    ncols = min(3, len(measures))  # a grid, not one long row
    nrows = -(-len(measures) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols + 1.6, 3.3 * nrows), dpi=110, squeeze=False)
    for ax in axes.flat[len(measures):]:
        ax.set_visible(False)
    for ax, m in zip(axes.flat, measures):
        d = results[results.measure == m].sort_values("step")
        for comp, g in d.groupby("component", sort=True):
            if comp == "random":
                ax.plot(g.step.clip(lower=1), g.value, "k--", lw=1.5, label="random baseline")
                continue
            if components is not None and not components(comp):
                continue
            ax.plot(g.step.clip(lower=1), g.value, lw=1.1, label=comp)
        ax.set_xscale("log")
        ax.set_xlabel("training step (step 0 drawn at 1)")
        ax.set_ylabel(_y_label(m), fontsize=8)
        ax.set_title(m.replace("_", " "), fontsize=9)
        ax.grid(alpha=0.3)
    handles = {lab: h for ax in axes.flat for h, lab in zip(*ax.get_legend_handles_labels())}
    fig.legend(handles.values(), handles.keys(), loc="center right", fontsize=6, title="head", title_fontsize=7,
               ncol=1 + len(handles) // 18)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1 - (0.9 + 0.6 * (len(handles) // 18)) / fig.get_figwidth(), 1))
    fig.savefig(path)
    plt.close(fig)
    return path


def _y_label(measure: str) -> str:
    """The y label of a head measure's panel, with its unit."""
    if measure.startswith("ablation_"):
        return "loss increase when ablated (nats)"
    if measure.endswith("_composition"):
        return "composition score (norm ratio)"
    if measure == "icl_score":
        return "loss late − loss early in context (nats)"
    return "attention score (0–1)"


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
        ax.set_xticks(range(n_heads))  # head indices are integers
        ax.set_yticks(range(n_heads))
        ax.set_xlabel("layer-1 head (receiver)")
        ax.set_ylabel("layer-0 head (sender)")
        ax.set_title(f"{mode.upper()}-composition (random baseline {float(base.iloc[0]) if len(base) else float('nan'):.3f})",
                     fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, label="composition score (norm ratio)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def heads_command(run_dir: str | Path, steps: str | Sequence[int] | None = None, *,
                  config: HeadAnalysisConfig = HeadAnalysisConfig(), out_dir: str | Path | None = None,
                  progress: bool = False, executor: str | Any = "inprocess", address: str | None = None,
                  workers: int | None = None) -> HeadAnalysis:
    """`rllc heads RUN_DIR [--steps ...]`: compute and store all head measures, write figures, HTML and tables.

    Writes into `out_dir` (default RUN_DIR/heads): head_types.csv (labelled table at the last step),
    head_measures.csv (long form, every analysed step), path_patching.csv, head_scores.png, ablation_scores.png,
    composition_heatmaps.png, composition_over_training.png, tokens_in_context.html.
    Returns:
        HeadAnalysis with `.files` and `.summary` (lines for the CLI to print after `.table`). Prints nothing
        itself except, with `progress`, the plan, its estimate and the bar (stderr).
    """
    result = analyze_heads(run_dir, steps, config=config, progress=progress, executor=executor, address=address,
                           workers=workers)
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
    result.summary = [result.run.headline() if result.run else "",
                      f"{name}: {len(result.steps)} checkpoints analysed ({result.steps[0]}..{last}); "
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
        from rllc.pipeline.store import ResultStore

        frame = ResultStore(result.run_dir).frame(with_extra=True)
        rows = frame[(frame.step == result.steps[-1]) & (frame.measure == "tic_unique_multigrams")]
        if rows.empty:
            return None
        ex = pd.DataFrame([{"component": c, **e} for c, x in zip(rows.component, rows.extra)
                           for e in x.get("examples", [])])
        if ex.empty:
            return None
        if "pattern" not in ex:  # rows stored before the pattern was kept
            ex["pattern"] = ""
        ex["pattern"] = ex["pattern"].fillna("")
    tok = run.tokenizer
    return render_tokens_in_context_html(ex, path, lambda i: tok.decode([int(i)]),
                                         title=f"{result.run_dir.name}: tokens in context at step {result.steps[-1]}")
