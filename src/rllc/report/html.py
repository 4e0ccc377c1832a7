"""`rllc report`: one self-contained HTML file with everything measured on one or several runs.

The file has no external resources at all (no scripts, fonts or style sheets from the network): figures are PNGs
drawn with matplotlib's Agg backend and inlined as base64 `data:` URIs, the style sheet is inline, and there is no
JavaScript. Sections, per run:

  1. configuration and provenance   run.json, tokenizer id, rllc version, data spec, checkpoints, results store
  2. loss and full-model LLC        with the stages detected on the LLC curve (shaded) and the stage table
  3. per-head rLLC curves           wrLLC on the pre-training data, coloured by cluster and by behavioural type
  4. drLLC per data set             per-head and full-model data-refined LLCs on every other data set
  4b. susceptibilities              response matrix over training, per-head χ curves per probe beside the rLLC,
                                    ground-truth AUCs and type agreement, per-token attributions in context
  5. head table                     type, evidence, scores, ablations, cluster and final rLLC per head
  6. composition                    Q/K/V-composition heat maps at the last analysed checkpoint
  7. Hessian comparisons            LLC beside Hessian trace, FIM trace and Hessian rank
  8. clustering                     metrics against k, the vote, the split tree, agreement with head types
  9. diagnostics                    invalid chains, unconverged estimates, sections that could not be drawn

and, for several runs, a cross-run section (LLC and loss overlaid; cluster transfer between runs, e.g. seeds).
Every section is optional: when its measure is not in the results store it says which command produces it.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import platform
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from rllc._errors import RllcError, check_writable, writing  # noqa: E402
from rllc.model.components import head_index, is_head_name  # noqa: E402

REPORT_NAME = "report.html"
HEAD_MEASURES = ("prev_token_score", "current_token_score", "induction_score", "prefix_matching_score",
                 "icl_score", "ablation_zero", "ablation_mean", "ablation_resample")
HESSIAN_MEASURES = ("hessian_trace", "fim_trace", "hessian_rank")
_TYPE_COLOURS = {"previous-token": "#1f77b4", "current-token": "#17becf", "induction": "#d62728",
                 "dyck": "#9467bd", "skip-n-gram": "#ff7f0e", "n-gram": "#2ca02c", "unlabelled": "#7f7f7f"}
_CLUSTER_COLOURS = ("#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#a65628", "#f781bf", "#999999")


def write_report(run_dirs: str | Path | Iterable[str | Path], out: str | Path | None = None) -> Path:
    """Write the HTML report of one or several run directories.

    Args:
        run_dirs: a run directory (written by `rllc train`, results in its `results.sqlite`) or several, e.g. the
            seeds of one configuration; with several, each gets its own section and a cross-run section compares
            them.
        out: the HTML file to write (default: `report.html` in the first run directory).

    Returns:
        The path written. The file is self-contained: open it anywhere, offline.
    """
    dirs = [Path(run_dirs)] if isinstance(run_dirs, (str, Path)) else [Path(d) for d in run_dirs]
    if not dirs:
        raise RllcError("report: give at least one run directory")
    for d in dirs:
        if not d.is_dir():
            raise RllcError(f"report: {d} is not a directory; pass run directories written by `rllc train`")
    out = Path(out) if out is not None else dirs[0] / REPORT_NAME
    from rllc.pipeline.store import STORE_NAME, ResultStore
    from rllc.train import load_run

    for d in dirs:  # a directory that is no run, or a store that is no SQLite file, fails here and not in the page
        load_run(d)
        if (d / STORE_NAME).exists():
            ResultStore(d, readonly=True)
    if out.is_dir():
        raise RllcError(f"report: --out {out} is a folder; give the HTML file's path, e.g. {out / REPORT_NAME}")
    check_writable(out.parent, "cannot write the report; pass --out a writable path")
    doc = _Doc()
    runs = [_RunData.load(d, _unique_name(d, dirs)) for d in dirs]
    sections = [_run_section(doc, r, prefix=f"r{i}-" if len(runs) > 1 else "", multi=len(runs) > 1)
                for i, r in enumerate(runs)]
    if len(runs) > 1:
        sections.append(_guard(doc, "cross", "Comparison across runs", lambda: _cross_run(doc, runs)))
    page = _page(runs, sections).encode("utf-8")
    with writing(out, needed=len(page), what="report"):
        out.parent.mkdir(parents=True, exist_ok=True)
    from rllc.train.checkpoints import atomic_write_bytes

    atomic_write_bytes(out, page)  # a full disk leaves the old report, never half a new one
    return out


# ------------------------------------------------------------------------------------------------ building blocks


@dataclass
class Section:
    """One titled part of the report: HTML body and subsections (rendered as h2/h3/h4 by depth)."""

    id: str
    title: str
    body: list[str] = field(default_factory=list)
    children: list[Section] = field(default_factory=list)


class _Doc:
    """Numbering of figures and tables, and report-level warnings."""

    def __init__(self) -> None:
        self.n_fig = 0
        self.n_tab = 0
        self.problems: list[str] = []

    def figure(self, png: bytes, caption: str, alt: str) -> str:
        self.n_fig += 1
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        return (f'<figure><img src="{uri}" alt="{_e(alt)}"><figcaption><b>Figure {self.n_fig}.</b> '
                f"{caption}</figcaption></figure>")

    def table(self, df: pd.DataFrame, caption: str, *, digits: int = 3, max_rows: int = 400) -> str:
        self.n_tab += 1
        more = ""
        if len(df) > max_rows:
            more = f"<p class=note>{len(df) - max_rows} more rows not shown.</p>"
            df = df.head(max_rows)
        # an all-missing object column (e.g. a stage without a transition) holds None, which to_html prints as-is
        df = df.apply(lambda c: c.where(c.notna(), "–") if c.dtype == object else c)
        body = df.to_html(index=False, na_rep="–", escape=True, border=0, classes="tbl",
                          float_format=lambda x: _fmt(x, digits))
        return (f'<p class=tcap><b>Table {self.n_tab}.</b> {caption}</p><div class=tblwrap>'
                f"{body}</div>{more}")


def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _fmt(x: float, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 10 ** -digits):
        return f"{x:.{digits}g}"
    return f"{x:.{digits}f}"


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _png_from(write: Callable[[Path], Any]) -> bytes:
    """Bytes of a PNG that a `plot_*(…, path)` function of rllc.report writes to a file."""
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "figure.png"
        write(p)
        plt.close("all")
        return p.read_bytes()


def _note(text: str) -> str:
    return f"<p class=note>{text}</p>"


def _missing(what: str, command: str) -> str:
    return f"<p class=missing>No {what} in the results store yet. Run <code>{_e(command)}</code> to compute it.</p>"


def _guard(doc: _Doc, sid: str, title: str, build: Callable[[], Section | list[str]]) -> Section:
    """Build a section; if it fails, the report still gets written and says why here and in diagnostics."""
    try:
        got = build()
    except Exception as e:  # noqa: BLE001 - one broken section must not lose the whole report
        msg = f"{title}: could not be drawn ({type(e).__name__}: {e})"
        doc.problems.append(msg)
        return Section(sid, title, [f"<p class=warn>{_e(msg)}</p>"])
    return got if isinstance(got, Section) else Section(sid, title, got)


def _unique_name(d: Path, dirs: Sequence[Path]) -> str:
    same = [x for x in dirs if x.name == d.name]
    return d.name if len(same) == 1 else f"{d.parent.name}/{d.name}"


def _is_head(c: str) -> bool:
    return is_head_name(c)


def _head_key(c: str) -> tuple[int, int]:
    return head_index(c)


# ------------------------------------------------------------------------------------------------ one run's data


@dataclass
class _RunData:
    """Everything the report reads from one run directory (each part None/empty when absent)."""

    path: Path
    name: str
    run: Any  # rllc.train.Run or None
    run_json: dict[str, Any]
    results: pd.DataFrame  # long form with `extra`
    configs: dict[str, dict[str, Any]]
    llc: pd.DataFrame  # llc rows of the primary sampler config
    llc_hash: str | None
    load_errors: list[str]
    stages: Any = None  # rllc.analysis.stages.Stages of the full-model LLC on pretrain
    stage_error: str = ""
    types: dict[str, str] = field(default_factory=dict)
    clusters: dict[str, int] = field(default_factory=dict)
    cluster_source: str = ""
    cluster_results: dict[int, Any] = field(default_factory=dict)  # layer -> ClusterResult
    cluster_errors: dict[int, str] = field(default_factory=dict)
    problems_from: int = 0  # the first of the report's problems that belongs to this run

    @classmethod
    def load(cls, path: Path, name: str) -> _RunData:
        from rllc.pipeline.store import STORE_NAME, ResultStore
        from rllc.train import load_run

        errors: list[str] = []
        try:
            run = load_run(path)
        except RllcError as e:
            run, _ = None, errors.append(str(e))
        try:
            run_json = json.loads((path / "run.json").read_text())
        except (OSError, ValueError):
            run_json = {}
        results, configs = pd.DataFrame(columns=["step", "component", "data", "measure", "value", "std",
                                                 "valid", "config_hash", "extra"]), {}
        if (path / STORE_NAME).exists():
            try:
                store = ResultStore(path, readonly=True)
                results, configs = store.frame(with_extra=True), store.configs()
            except RllcError as e:
                errors.append(str(e))
        llc = results[results.measure == "llc"]
        llc_hash = None
        if len(llc):
            llc_hash = llc.config_hash.value_counts().index[0]  # the settings with the most estimates
            llc = llc[llc.config_hash == llc_hash]
        r = cls(path, name, run, run_json, results, configs, llc.reset_index(drop=True), llc_hash, errors)
        r._analyse()
        return r

    def _analyse(self) -> None:
        """Stages, head types and clusters, each best-effort (the sections say what is missing)."""
        from rllc.analysis.stages import curve_stages

        full = self.llc[(self.llc.component == "all") & (self.llc.data == "pretrain")]
        if len(full):
            try:
                self.stages = curve_stages(self.llc, component="all", data="pretrain")
            except Exception as e:  # noqa: BLE001 - the report goes on without stages and says why
                self.stage_error = str(e) if isinstance(e, RllcError) else f"{type(e).__name__}: {e}"
        types = self.results[self.results.measure == "head_type"]
        if len(types):
            last = types[types.step == types.step.max()]
            self.types = {c: str(x.get("label", "unlabelled")) for c, x in zip(last.component, last.extra)}
        self._cluster()

    def _cluster(self) -> None:
        from rllc.analysis.clustering import cluster_layer

        heads = sorted({c for c in self.llc.component if _is_head(c)}, key=_head_key)
        data = set(self.llc.data)
        if heads and {"pretrain", "code"} <= data:
            for layer in sorted({_head_key(c)[0] for c in heads}):
                try:
                    self.cluster_results[layer] = cluster_layer(self.llc, layer)
                except Exception as e:  # noqa: BLE001 - the report goes on unclustered and says why
                    self.cluster_errors[layer] = str(e) if isinstance(e, RllcError) else f"{type(e).__name__}: {e}"
        stored = self.results[self.results.measure == "cluster"]
        if len(stored):
            last = stored[stored.step == stored.step.max()]
            self.clusters = {c: int(v) for c, v in zip(last.component, last.value) if v is not None}
            self.cluster_source = f"stored clustering (measure 'cluster', data {last.data.iloc[0]!r})"
        elif self.cluster_results:
            self.clusters = {h: c for res in self.cluster_results.values() for h, c in res.assignment().items()}
            self.cluster_source = "consensus clustering computed for this report (wrLLC on pretrain + drLLC on code)"

    @property
    def cmd(self) -> str:
        return str(self.path)


# ------------------------------------------------------------------------------------------------ sections


def _run_section(doc: _Doc, r: _RunData, *, prefix: str, multi: bool) -> Section:
    parts = [
        ("findings", "Findings", lambda: _findings(doc, r)),
        ("config", "Configuration and provenance", lambda: _provenance(doc, r)),
        ("loss", "Loss and full-model LLC, with stages", lambda: _loss_llc(doc, r)),
        ("heads", "Per-head rLLC curves", lambda: _head_curves(doc, r)),
        ("drllc", "Data-refined LLC per data set", lambda: _drllc(doc, r)),
        ("susceptibility", "Susceptibilities: heads' response to probe data", lambda: _susceptibility(doc, r)),
        ("table", "Head table", lambda: _head_table(doc, r)),
        ("composition", "Composition", lambda: _composition(doc, r)),
        ("hessian", "Hessian comparisons", lambda: _hessian(doc, r)),
        ("clustering", "Clustering", lambda: _clustering(doc, r)),
        ("diagnostics", "Diagnostics", lambda: _diagnostics(doc, r)),
    ]
    r.problems_from = len(doc.problems)
    # Diagnostics last, so that it lists the problems of every section above it.
    children = [_guard(doc, prefix + sid, title, build) for sid, title, build in parts]
    if not multi:
        return Section("run", r.name, children=children)
    return Section(prefix + "run", f"Run {r.name}", [f"<p class=path>{_e(r.path.resolve())}</p>"], children)


def _findings(doc: _Doc, r: _RunData) -> list[str]:
    """The sampler used (and its measured bias against the paper's), then the paper's findings, numbered."""
    from rllc.analysis.findings import RERUN_NOTE, evaluate, rerun_command

    ck = sorted(r.run.steps) if r.run is not None else sorted(set(r.results.step))
    found = evaluate(r.results, r.configs, r.llc_hash, stages=r.stages, types=r.types,
                     assignments={layer: cr.assignment() for layer, cr in r.cluster_results.items()},
                     train_data=r.run.config.train.data if r.run is not None else "", checkpoint_steps=ck)
    n = (r.configs.get(r.llc_hash) or {}).get("n_samples", 512) if r.llc_hash else 512
    out = [f"<p><b>Sampler.</b> {_e(found.sampler)}. <b>Bias.</b> {_e(found.bias_line)}. To rerun at the paper's "
           f"settings: <code>{_e(rerun_command(r.cmd, n))}</code> ({_e(RERUN_NOTE)}).</p>"]
    if len(found.bias):
        out.append(doc.table(found.bias, "This run's sampler against the paper's settings (4 chains × 200 draws, "
                                         "batch 32) on the same checkpoint, component and data: ratio = this run's "
                                         "λ̂ / the paper-settings λ̂; paper_se is the latter's standard error."))
    lis = "".join(f"<li><b>{_e(f.title)}</b> — <i>{_e(f.verdict)}</i>. Claim: {_e(f.claim)}. "
                  f"Evidence: {_e(f.evidence)}.</li>" for f in found.findings)
    out.append(f"<ol class=findings>{lis}</ol>")
    return out


def _provenance(doc: _Doc, r: _RunData) -> list[str]:
    from rllc import __version__

    out = []
    for e in r.load_errors:
        out.append(f"<p class=warn>{_e(e)}</p>")
    facts: list[tuple[str, Any]] = [("run directory", r.path.resolve())]
    if r.run is not None:
        cfg = r.run.config
        m, t = cfg.model, cfg.train
        facts += [("model", f"{m.n_layers} layers × {m.n_heads} heads, d_model {m.d_model}, d_head {m.d_head}, "
                            f"n_ctx {m.n_ctx}, vocabulary {m.d_vocab}"),
                  ("training data", t.data), ("tokenizer id", cfg.tokenizer_id or "–")]
        prov = getattr(r.run, "provenance", None)
        if prov is not None:  # an `rllc import`ed series: where it came from, not rllc training settings
            facts += [("imported from", f"{prov['source']} ({prov['kind']}, {prov['family']}"
                                        f"{', weights copied' if prov['copied'] else ''})"),
                      ("revisions", ", ".join(prov["revisions"].values()))]
        else:
            facts += [("training", f"{t.steps} steps, batch {t.batch_size}, lr {t.lr:g}, seed {t.seed}")]
        ck = r.run.checkpoints()
        if len(ck):
            last = ck.iloc[-1]
            facts += [("checkpoints", f"{len(ck)} (steps {int(ck.step.min())} … {int(ck.step.max())})"),
                      ("tokens seen at the last checkpoint", f"{int(last.tokens_seen):,}"
                       if pd.notna(last.tokens_seen) else "–"),
                      ("validation loss at the last checkpoint", _fmt(last.val_loss, 4))]
        else:
            facts.append(("checkpoints", "none yet"))
    facts += [("rllc version (training)", r.run_json.get("rllc_version", "–")),
              ("rllc version (this report)", __version__),
              ("report written", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
               + f" with Python {platform.python_version()}, matplotlib {matplotlib.__version__}")]
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts)
    out.append(f"<table class=facts>{rows}</table>")

    if len(r.results):
        counts = (r.results.groupby("measure").agg(rows=("value", "size"), steps=("step", "nunique"),
                                                   components=("component", "nunique"),
                                                   data_sets=("data", lambda s: ", ".join(sorted(set(s))))
                                                   ).reset_index())
        out.append(doc.table(counts, f"What the results store <code>{_e(r.path / 'results.sqlite')}</code> "
                                     f"holds: {len(r.results)} rows."))
    else:
        out.append(_missing("results", f"rllc sweep {r.cmd}"))
    if r.run_json:
        out.append("<details><summary>run.json (the full training configuration)</summary>"
                   f"<pre>{_e(json.dumps(r.run_json, indent=1))}</pre></details>")
    if r.configs:
        used = r.results.groupby("config_hash").size().to_dict() if len(r.results) else {}
        note = lambda h: ", used for the LLC curves below" if h == r.llc_hash else ""  # noqa: E731
        body = "".join(f"<h5>config {_e(h)} ({used.get(h, 0)} rows{note(h)})</h5>"
                       f"<pre>{_e(json.dumps(c, indent=1))}</pre>" for h, c in r.configs.items())
        n = len(r.configs)
        out.append(f"<details><summary>Settings behind the results ({n} config hash{'es' if n > 1 else ''})</summary>"
                   f"{body}</details>")
    return out


def _shade(ax: plt.Axes, stages: Any) -> None:
    from rllc.report.comparisons import shade_stages

    shade_stages(ax, stages)


def _loss_llc(doc: _Doc, r: _RunData) -> list[str]:
    out = []
    ck = r.run.checkpoints() if r.run is not None else pd.DataFrame()
    metrics = r.run.metrics() if r.run is not None else pd.DataFrame()
    full = r.llc[(r.llc.component == "all") & (r.llc.data == "pretrain")].sort_values("step")
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), dpi=100)
    ax = axes[0]
    if len(metrics):
        ax.plot(metrics.step.clip(lower=1), metrics.train_loss, lw=0.8, alpha=0.7, label="train (logged)")
    if len(ck):
        ax.plot(ck.step.clip(lower=1), ck.val_loss, "o-", ms=2.5, lw=1.2, label="validation (checkpoints)")
    ax.set(xscale="log", xlabel="training step", ylabel="next-token loss (nats)")
    ax.set_title("loss", fontsize=9, pad=14)
    ax = axes[1]
    if len(full):
        ax.errorbar(full.step.clip(lower=1), full.value, yerr=full["std"].fillna(0), fmt="o", ms=3, capsize=1.5,
                    label="λ̂ (±1 s.d. across chains)")
        bad = full[~full.valid.astype(bool)]
        if len(bad):
            ax.plot(bad.step.clip(lower=1), bad.value, "x", color="k", ms=6, label="invalid estimate")
        if r.stages is not None:
            gs, sm = np.asarray(r.stages.grid_steps), np.asarray(r.stages.smoothed)
            ax.plot(gs[gs >= 1], sm[gs >= 1], lw=1.4, label=f"smoothed (bandwidth {r.stages.bandwidth:g} in ln step)")
    else:
        ax.text(0.5, 0.5, "no full-model LLC yet", ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set(xscale="log", xlabel="training step", ylabel="λ̂ (full model, pre-training data)")
    ax.set_title("LLC", fontsize=9, pad=14)
    for a in axes:
        if r.stages is not None:
            _shade(a, r.stages)
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7)
    fig.suptitle(f"{r.name}: loss and full-model LLC over training", fontsize=9)
    fig.tight_layout()
    cap = ("Left: training loss (logged mean) and validation loss at each checkpoint. Right: the full-model LLC "
           "on the pre-training data with ±1 s.d. across SGLD chains. Both axes use a log step axis")
    if r.stages is not None:
        cap += ("; shaded bands are the developmental stages S1, S2, … found at the critical points of the "
                "smoothed LLC (dashed lines); dotted lines mark each stage's transition, where the smoothed LLC "
                "changes fastest")
    out.append(doc.figure(_png(fig), cap + ".", f"{r.name} loss and LLC"))
    if r.stages is not None:
        from rllc.analysis.stages import BEHAVIOUR_MIN_CHANGE

        scored = r.results.measure.isin(["prev_token_score", "induction_score", "icl_score"]).any()
        t = r.stages.table(loss=ck if len(ck) else None, behaviour=r.results if scored else None)
        out.append(doc.table(t, "Developmental stages of the full-model LLC, read like Hoogland et al.'s LM1–LM5: "
                                "each stage's step range, the boundary that ends it, the smoothed LLC at each end and "
                                "its change, its transition (the step of fastest change)"
                                + (", the validation loss at each end and its change" if len(ck) else "")
                                + (f", and what rises and what falls in it — each head score (per head; at most two "
                                   f"heads per score, the largest changes) and the model's ICL score (loss at a "
                                   f"late token minus an early one: it falls as in-context learning improves) that "
                                   f"changes by at least {BEHAVIOUR_MIN_CHANGE:.0%} of its range over the run, read "
                                   f"at the stage's ends" if scored else "") + "."))
        out.append(_note("Estimates in the stage curve: " + _e(r.stages.handling()) + "."))
        if (r.results.measure == "induction_score").any():
            from rllc.analysis.stages import formation_timing

            try:
                out.append(_note("Induction heads vs stages: " + _e(formation_timing(r.stages, r.results).sentence())
                                 + "."))
            except RllcError as e:
                out.append(_note(f"Induction heads vs stages: {_e(str(e))}"))
    elif not len(full):
        out.append(_missing("full-model LLC (measure llc, component all, data pretrain)", f"rllc sweep {r.cmd}"))
    else:
        out.append(_note(f"No stages: {_e(r.stage_error)}"))
    return out


def _head_rows(r: _RunData, data: str) -> pd.DataFrame:
    d = r.llc[(r.llc.data == data) & r.llc.component.map(_is_head)]
    return d.sort_values("step")


def _plot_heads_coloured(r: _RunData, d: pd.DataFrame, colour: Callable[[str], tuple[str, str]], title: str,
                         legend_title: str) -> bytes:
    """One panel per layer, one line per head; `colour(head)` → (colour, legend group)."""
    layers = sorted({_head_key(c)[0] for c in d.component})
    fig, axes = plt.subplots(1, len(layers), figsize=(5.4 * len(layers), 3.8), dpi=100, squeeze=False,
                             sharey=True)
    for ax, layer in zip(axes[0], layers):
        seen: dict[str, Any] = {}
        comps = sorted({c for c in d.component if _head_key(c)[0] == layer}, key=_head_key)
        for comp in comps:
            g = d[d.component == comp]
            col, group = colour(comp)
            x, y = g.step.clip(lower=1).to_numpy(), g.value.to_numpy(dtype=float)
            (line,) = ax.plot(x, y, lw=1.3, color=col, alpha=0.9)
            sd = np.nan_to_num(g["std"].to_numpy(dtype=float))
            ax.fill_between(x, y - sd, y + sd, color=col, alpha=0.12, lw=0)
            bad = ~g.valid.to_numpy(dtype=bool)
            if bad.any():
                ax.plot(x[bad], y[bad], "x", color="k", ms=5)
            if len(x):
                ax.annotate(comp, (x[-1], y[-1]), xytext=(3, 0), textcoords="offset points", fontsize=7,
                            color=col, va="center")
            seen.setdefault(group, line)
        if r.stages is not None:
            _shade(ax, r.stages)
        ax.set(xscale="log", xlabel="training step")
        ax.set_title(f"layer {layer}", fontsize=9, pad=14)
        ax.grid(alpha=0.3)
        ax.legend(list(seen.values()), list(seen), fontsize=7, title=legend_title, title_fontsize=7)
    axes[0][0].set_ylabel("λ̂ of the head (±1 s.d.)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _png(fig)


def _head_curves(doc: _Doc, r: _RunData) -> list[str]:
    d = _head_rows(r, "pretrain")
    if d.empty:
        return [_missing("per-head rLLC (measure llc, components l:h, data pretrain)", f"rllc sweep {r.cmd}")]
    out = []
    stages = " Shaded: the stages of the full-model LLC." if r.stages is not None else ""
    if r.clusters:
        col = lambda c: (_CLUSTER_COLOURS[r.clusters[c] % len(_CLUSTER_COLOURS)], f"cluster {r.clusters[c]}") \
            if c in r.clusters else ("#bbbbbb", "not clustered")  # noqa: E731
        png = _plot_heads_coloured(r, d, col, f"{r.name}: per-head wrLLC, coloured by cluster", "cluster")
        out.append(doc.figure(png, "Weight-refined LLC (wrLLC) of every head on the pre-training data, one panel "
                                   f"per layer, coloured by cluster ({_e(r.cluster_source)}). Cluster numbers are "
                                   f"per layer; × marks invalid estimates.{stages}", "wrLLC by cluster"))
    else:
        why = "; ".join(f"layer {k}: {v}" for k, v in r.cluster_errors.items())
        out.append(_note("Not coloured by cluster: " + (_e(why) if why else
                         "clustering needs each head's wrLLC on pretrain and drLLC on code "
                         f"(<code>rllc sweep {_e(r.cmd)}</code> with data pretrain and code).")))
    if r.types:
        col = lambda c: (_TYPE_COLOURS.get(r.types.get(c, "unlabelled"), "#7f7f7f"),  # noqa: E731
                         r.types.get(c, "unlabelled"))
        png = _plot_heads_coloured(r, d, col, f"{r.name}: per-head wrLLC, coloured by behavioural type", "type")
        out.append(doc.figure(png, "The same curves coloured by each head's behavioural type at the last analysed "
                                   "checkpoint (see the head table for the evidence)." + stages, "wrLLC by type"))
    else:
        out.append(_missing("behavioural head types (measure head_type)", f"rllc heads {r.cmd}"))
    if not r.clusters and not r.types:
        cmap = plt.get_cmap("tab10")
        col = lambda c: (cmap(_head_key(c)[1] % 10), c)  # noqa: E731
        out.append(doc.figure(_plot_heads_coloured(r, d, col, f"{r.name}: per-head wrLLC", "head"),
                              "Weight-refined LLC of every head on the pre-training data." + stages, "wrLLC"))
    return out


def _susceptibility(doc: _Doc, r: _RunData) -> list[str]:
    from rllc.report.susceptibility import section

    return section(doc, r)


def _drllc(doc: _Doc, r: _RunData) -> list[str]:
    data_sets = sorted(set(r.llc.data) - {"pretrain"})
    if not data_sets:
        return [_missing("data-refined LLC (measure llc on a data set other than pretrain)",
                         f"rllc sweep {r.cmd} --data code")]
    out = []
    full = r.llc[r.llc.component == "all"]
    if full.data.nunique() > 0:
        fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=100)
        for data, g in full.sort_values("step").groupby("data"):
            ax.errorbar(g.step.clip(lower=1), g.value, yerr=g["std"].fillna(0), fmt="o-", ms=2.5, lw=1.2,
                        capsize=1.5, label=data)
        if r.stages is not None:
            _shade(ax, r.stages)
        ax.set(xscale="log", xlabel="training step", ylabel="λ̂ of the full model")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="data set", title_fontsize=7)
        fig.suptitle(f"{r.name}: full-model LLC (pretrain) and drLLC per data set", fontsize=9)
        fig.tight_layout()
        out.append(doc.figure(_png(fig), "Full-model LLC on each data set the sweep measured: on the pre-training "
                                         "data it is the LLC, on any other data set the data-refined LLC (drLLC); "
                                         "a <code>model:…</code> data set is text generated by a model.",
                              "drLLC full model"))
    cmap = plt.get_cmap("tab10")
    for data in data_sets:
        d = _head_rows(r, data)
        if d.empty:
            continue
        col = lambda c: (cmap(_head_key(c)[1] % 10), c)  # noqa: E731
        out.append(doc.figure(_plot_heads_coloured(r, d, col, f"{r.name}: per-head wdrLLC on {data}", "head"),
                              f"Weight- and data-refined LLC (wdrLLC) of every head on <code>{_e(data)}</code>, "
                              "one panel per layer, ±1 s.d. across chains.", f"wdrLLC {data}"))
    return out


def _head_table(doc: _Doc, r: _RunData) -> list[str]:
    res = r.results
    hm = res[res.measure.isin(HEAD_MEASURES + ("head_type",)) & res.component.map(_is_head)]
    if hm.empty and r.llc.empty:
        return [_missing("head measures (scores, ablations, head types)", f"rllc heads {r.cmd}")]
    out = []
    heads = sorted(set(hm.component) | {c for c in r.llc.component if _is_head(c)}, key=_head_key)
    t = pd.DataFrame({"head": heads})
    step = None
    if len(hm):
        step = int(hm.step.max())
        last = hm[hm.step == step]
        vals = last[last.measure != "head_type"].pivot_table(index="component", columns="measure", values="value",
                                                            aggfunc="first")
        types = last[last.measure == "head_type"]
        info = pd.DataFrame({"head": types.component,
                             "type": [x.get("label", "") for x in types.extra],
                             "confidence": types.value.astype(float),
                             "evidence": [x.get("evidence", "") for x in types.extra]})
        t = t.merge(info, on="head", how="left") if len(info) else t
        cols = [m for m in HEAD_MEASURES if m in vals.columns]
        t = t.merge(vals[cols].rename(columns=lambda c: c.replace("_score", "").replace("_", " ")),
                    left_on="head", right_index=True, how="left")
    if r.clusters:
        t["cluster"] = t["head"].map(r.clusters).astype("Int64")
    pre = r.llc[(r.llc.data == "pretrain") & r.llc.component.map(_is_head)]
    if len(pre):
        lstep = int(pre.step.max())
        t[f"wrLLC @ {lstep}"] = t["head"].map(pre[pre.step == lstep].set_index("component").value)
    cap = ("One row per head" + (f", scores and ablations at step {step}" if step is not None else "") +
           ". Scores are attention fractions in [0, 1] (prev token, current token, induction, prefix matching); "
           "icl is the in-context-learning score with the head mean-ablated; ablation columns are the loss "
           "increase in nats when the head is zeroed, mean-ablated or resampled; confidence is the evidence "
           "behind the type.")
    out.append(doc.table(t, cap))
    if step is None:
        out.append(_missing("head scores, ablations and types", f"rllc heads {r.cmd}"))
    elif "type" not in t:
        out.append(_missing("head types (measure head_type)", f"rllc heads {r.cmd}"))
    return out


def _composition(doc: _Doc, r: _RunData) -> list[str]:
    res = r.results
    d = res[res.measure.str.endswith("_composition")]
    if d.empty:
        return [_missing("composition scores (q/k/v_composition)", f"rllc heads {r.cmd}")]
    step = int(d.step.max())
    d = d[d.step == step]
    pairs = sorted({(int(s.split(":")[0]), int(t.split(":")[0])) for s, t in
                    (c.split("->") for c in d.component if "->" in c)})
    modes = [m for m in ("q", "k", "v") if (d.measure == f"{m}_composition").any()]
    fig, axes = plt.subplots(len(pairs), len(modes), figsize=(4.0 * len(modes), 3.5 * len(pairs)), dpi=100,
                             squeeze=False)
    for i, (ls, lr) in enumerate(pairs):
        for j, mode in enumerate(modes):
            g = d[d.measure == f"{mode}_composition"]
            cells = [(tuple(c.split("->")), v) for c, v in zip(g.component, g.value) if "->" in c]
            cells = [((_head_key(s)[1], _head_key(t)[1]), v) for (s, t), v in cells
                     if _head_key(s)[0] == ls and _head_key(t)[0] == lr]
            n_s = max((a for (a, _), _ in cells), default=0) + 1
            n_r = max((b for (_, b), _ in cells), default=0) + 1
            mat = np.full((n_s, n_r), np.nan)
            for (a, b), v in cells:
                mat[a, b] = np.nan if v is None else v
            ax = axes[i][j]
            im = ax.imshow(mat, cmap="viridis", vmin=0)
            base = g[g.component == "random"].value
            btxt = f", random baseline {float(base.iloc[0]):.3f}" if len(base) and pd.notna(base.iloc[0]) else ""
            ax.set_title(f"{mode.upper()}-composition {ls}→{lr}{btxt}", fontsize=8)
            ax.set_xlabel(f"layer-{lr} head (receiver)")
            ax.set_ylabel(f"layer-{ls} head (sender)")
            ax.set_xticks(range(n_r))
            ax.set_yticks(range(n_s))
            fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"{r.name}: composition scores at step {step}", fontsize=9)
    fig.tight_layout()
    return [doc.figure(_png(fig), f"Q-, K- and V-composition scores (Elhage et al. 2021) between every sender head "
                                  f"and every later receiver head at step {step}, from the weights alone; the "
                                  "random baseline is the mean score of Gaussian matrices of the same shapes.",
                       "composition heat maps")]


def _hessian(doc: _Doc, r: _RunData) -> list[str]:
    from rllc.report.comparisons import plot_hessian_comparison

    res = r.results
    hm = res[res.measure.isin(HESSIAN_MEASURES)]
    if hm.empty:
        return [_missing("Hessian measures (hessian_trace, fim_trace, hessian_rank)", f"rllc hessian {r.cmd}")]
    both = pd.concat([r.llc.drop(columns=["extra"], errors="ignore"), hm.drop(columns=["extra"])])
    comps = ["all"] + sorted({c for c in hm.component if _is_head(c)}, key=_head_key)[:8]
    comps = [c for c in comps if (both.component == c).any()]
    png = _png_from(lambda p: plot_hessian_comparison(both, p, components=comps, stages=r.stages,
                                                      title=f"{r.name}: LLC beside Hessian measures"))
    out = [doc.figure(png, "The LLC (left) beside the Hessian trace, the Fisher information trace (on the model's "
                           "own samples, data 'self') and the numerical Hessian rank, per component, ±1 standard "
                           "error. The LLC is a degeneracy-aware count of effective parameters; the Hessian "
                           "measures are its second-order counterparts.", "Hessian comparison")]
    rows = []
    for comp in comps:
        llc = r.llc[(r.llc.component == comp) & (r.llc.data == "pretrain")].groupby("step").value.mean()
        for m in HESSIAN_MEASURES:
            h = hm[(hm.component == comp) & (hm.measure == m)]
            h = h[h.data == ("self" if m == "fim_trace" else "pretrain")] if m == "fim_trace" or \
                (h.data == "pretrain").any() else h
            s = h.groupby("step").value.mean()
            j = pd.concat([llc.rename("llc"), s.rename(m)], axis=1).dropna()
            if len(j) >= 3:
                rows.append({"component": comp, "measure": m, "checkpoints": len(j),
                             "Spearman ρ with LLC": j.corr(method="spearman").iloc[0, 1]})
    if rows:
        out.append(doc.table(pd.DataFrame(rows), "Rank correlation over checkpoints between the LLC and each "
                                                 "Hessian measure (checkpoints where both exist)."))
    return out


def _clustering(doc: _Doc, r: _RunData) -> list[str]:
    from rllc.analysis.clustering import split_tree, type_agreement
    from rllc.report.comparisons import plot_cluster_metrics, plot_split_tree

    if not r.cluster_results:
        why = "; ".join(f"layer {k}: {_e(v)}" for k, v in r.cluster_errors.items())
        out = [_note("Clustering needs each head's wrLLC on <code>pretrain</code> and drLLC on <code>code</code> "
                     f"and at least 3 heads per layer. {why}")]
        if r.llc.empty or "code" not in set(r.llc.data):
            out.append(_missing("per-head LLC curves on pretrain and code", f"rllc sweep {r.cmd}"))
        return out
    out = []
    agree = []
    for layer, cr in sorted(r.cluster_results.items()):
        png = _png_from(lambda p: plot_cluster_metrics(cr.metrics, p, chosen_k=cr.k,
                                                       title=f"{r.name}: clustering metrics, layer {layer}"))
        votes = ", ".join(f"k={k}: {v:g}" for k, v in cr.votes.items())
        out.append(f"<h4>Layer {layer}: k = {cr.k}</h4>")
        out.append(doc.figure(png, f"Silhouette, Calinski–Harabasz and Davies–Bouldin scores of k-means, Ward and "
                                   f"k-Shape clusterings of layer {layer}'s heads against k (features: each head's "
                                   f"{_scaling(cr.trajectories)} wrLLC and drLLC curves). Votes: {_e(votes)}; "
                                   f"dashed: the chosen k = {cr.k}.{_filled(cr.trajectories)}",
                              f"cluster metrics layer {layer}"))
        try:
            tree = split_tree(cr.trajectories)
            png = _png_from(lambda p: plot_split_tree(tree, p, title=f"{r.name}: layer {layer} split tree (Ward)"))
            out.append(doc.figure(png, f"How layer {layer}'s clusters split as k grows (Ward linkage, nested).",
                                  f"split tree layer {layer}"))
        except RllcError as e:
            out.append(_note(f"No split tree: {_e(e)}"))
        out.append(doc.table(cr.frame().rename(columns={"component": "head"}),
                             f"Layer {layer}: the consensus cluster of each head and each algorithm's labels at "
                             f"k = {cr.k}."))
        if r.types:
            a = type_agreement(cr.assignment(), r.types)
            agree.append({"layer": layer, "k": cr.k, "heads compared": a.n, "ARI": a.ari, "purity": a.purity})
    if agree:
        out.append(doc.table(pd.DataFrame(agree), "Agreement of the clusters with the behavioural head types "
                                                  "(unlabelled heads left out): adjusted Rand index (1 = the same "
                                                  "partition, ≈0 = chance) and purity."))
    elif not r.types:
        out.append(_missing("head types to compare the clusters with", f"rllc heads {r.cmd}"))
    return out


def _scaling(traj: Any) -> str:
    return {"none": "raw (unscaled, as in the paper's F.5.1)", "zscore": "z-scored",
            "minmax": "min–max scaled"}.get(traj.standardise, traj.standardise)


def _filled(traj: Any) -> str:
    if not traj.filled:
        return ""
    cells = ", ".join(f"{h} on {d} at step {s}" for h, d, s in traj.filled[:6])
    return (f" {len(traj.filled)} invalid estimate(s) filled by interpolation along the head's own curve: "
            f"{_e(cells)}{' …' if len(traj.filled) > 6 else ''}.")


def _diagnostics(doc: _Doc, r: _RunData) -> list[str]:
    out = []
    rows = []
    for _, x in r.results[r.results.measure == "llc"].iterrows():
        diag = (x.extra or {}).get("diagnostics", {}) if isinstance(x.extra, dict) else {}
        issues = []
        if not x.valid:
            issues.append("invalid")
        if diag.get("diverged"):
            issues.append(f"{len(diag['diverged'])} chain(s) diverged")
        if diag.get("converged") is False:
            issues.append("not converged")
        if diag.get("negative"):
            issues.append("negative λ̂")
        rh = diag.get("rhat")
        if rh is not None and rh > 1.1:
            issues.append(f"R-hat {rh:.2f}")
        if diag.get("converged") is False and diag.get("bias") is not None:
            b = diag["bias"]  # nβ(mean of all draws − mean of the second half), issue 11
            issues.append(f"likely {'low' if b <= 0 else 'high'} by {abs(b):.3g}")
        bias, bias_se = diag.get("bias"), diag.get("bias_se")
        if issues:
            ess = diag.get("ess")
            low = None if bias is None else f"{-bias:+.3g}" + ("" if bias_se is None else f" ± {bias_se:.2g}")
            rows.append({"step": int(x.step), "component": x.component, "data": x.data, "config": x.config_hash,
                         "λ̂": x.value, "ESS": None if ess is None else round(ess), "low by": low,
                         "issues": ", ".join(issues), "messages": " | ".join(diag.get("messages", []))})
    n_llc = int((r.results.measure == "llc").sum())
    problems = list(r.load_errors) + doc.problems[r.problems_from:]
    if problems:
        out.append("<ul class=warnlist>" + "".join(f"<li>{_e(p)}</li>" for p in problems) + "</ul>")
    if n_llc == 0:
        out.append(_missing("LLC estimates to check", f"rllc sweep {r.cmd}"))
    elif rows:
        t = pd.DataFrame(rows)
        n_bad = int((~r.results[r.results.measure == "llc"].valid.astype(bool)).sum())
        out.append(f"<p class=warn>{len(t)} of {n_llc} LLC estimates are flagged ({n_bad} invalid). Invalid "
                   "estimates are drawn as × in the figures; unconverged ones may be biased — rerun them with a "
                   "smaller step size or more draws (<code>rllc calibrate</code> chooses ε).</p>")
        out.append(doc.table(t, "LLC estimates whose chains diverged, did not converge, gave a negative λ̂ or have "
                                "split-R-hat above 1.1, with their bulk ESS, how much higher the second half of "
                                "their draws averages than all draws (± s.e. across chains: the bias of a chain too "
                                "short to have settled, when the trace is still rising) and the sampler's own "
                                "messages."))
    else:
        out.append(f"<p class=ok>All {n_llc} LLC estimates are valid and converged.</p>")
    if r.stage_error:
        out.append(f"<p class=warn>Stage detection: {_e(r.stage_error)}</p>")
    return out


# ------------------------------------------------------------------------------------------------ several runs


def _cross_run(doc: _Doc, runs: Sequence[_RunData]) -> list[str]:
    from rllc.analysis.clustering import head_trajectories, transfer_clusters

    out = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), dpi=100)
    for r in runs:
        if r.run is not None:
            ck = r.run.checkpoints()
            axes[0].plot(ck.step.clip(lower=1), ck.val_loss, "o-", ms=2.5, lw=1.2, label=r.name)
        full = r.llc[(r.llc.component == "all") & (r.llc.data == "pretrain")].sort_values("step")
        if len(full):
            axes[1].errorbar(full.step.clip(lower=1), full.value, yerr=full["std"].fillna(0), fmt="o-", ms=2.5,
                             lw=1.2, capsize=1.5, label=r.name)
    for ax, ylabel in zip(axes, ("validation loss (nats)", "λ̂ (full model, pretrain)")):
        ax.set(xscale="log", xlabel="training step", ylabel=ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle("validation loss and full-model LLC of every run", fontsize=9)
    fig.tight_layout()
    out.append(doc.figure(_png(fig), "Validation loss (left) and full-model LLC (right) of every run overlaid; "
                                     "runs differing only in seed should agree up to noise.", "runs overlaid"))
    stage_rows = [{"run": r.name, "boundaries": ", ".join(f"{b:.0f}" for b in r.stages.boundaries) or "none"}
                  for r in runs if r.stages is not None]
    if stage_rows:
        out.append(doc.table(pd.DataFrame(stage_rows), "Stage boundaries (steps) of each run's full-model LLC."))
    rows = []
    for src in runs:
        for layer, cr in sorted(src.cluster_results.items()):
            for tgt in runs:
                if tgt is src:
                    continue
                try:
                    tt = head_trajectories(tgt.llc, layer, data=cr.trajectories.series,
                                           standardise=cr.trajectories.standardise)
                    tr = transfer_clusters(cr.trajectories, tt, cr.k)
                except RllcError as e:
                    rows.append({"layer": layer, "source": src.name, "target": tgt.name, "k": cr.k,
                                 "ARI": float("nan"), "note": str(e)})
                    continue
                rows.append({"layer": layer, "source": src.name, "target": tgt.name, "k": cr.k, "ARI": tr.ari,
                             "note": f"{len(tr.steps)} common checkpoints"})
    if rows:
        out.append(doc.table(pd.DataFrame(rows), "Cluster transfer: k-means clusters fit on the source run's head "
                                                 "curves predict the target run's heads; the adjusted Rand index "
                                                 "compares them with the target's own clustering (1 = the same "
                                                 "partition)."))
    else:
        out.append(_note("No cluster transfer: clustering needs per-head LLC curves on pretrain and code in at "
                         "least one run (<code>rllc sweep RUN_DIR</code>) and at least 3 heads per layer."))
    return out


# ------------------------------------------------------------------------------------------------ the page

_CSS = """
:root { --fg: #1d2330; --muted: #5b6475; --line: #d9dde5; --accent: #2f5d9a; --bg-soft: #f5f7fa; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.5;
       font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "Noto Sans", sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 64px; }
header.top { border-bottom: 2px solid var(--accent); margin-bottom: 18px; }
h1 { font-size: 26px; margin: 8px 0 2px; }
.subtitle { color: var(--muted); margin: 0 0 12px; }
h2 { font-size: 21px; margin: 40px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 18px; margin: 30px 0 8px; color: var(--accent); }
h4 { font-size: 15px; margin: 20px 0 6px; }
h5 { font-size: 13px; margin: 12px 0 4px; }
nav.toc { background: var(--bg-soft); border: 1px solid var(--line); border-radius: 6px; padding: 10px 18px;
          margin: 10px 0 24px; columns: 2; column-gap: 36px; }
nav.toc > b { display: block; column-span: all; margin-bottom: 4px; }
nav.toc ol { margin: 0; padding-left: 20px; } nav.toc li { break-inside: avoid; }
a { color: var(--accent); text-decoration: none; } a:hover { text-decoration: underline; }
figure { margin: 14px 0 22px; } figure img { max-width: 100%; height: auto; display: block;
         border: 1px solid var(--line); border-radius: 4px; }
figcaption { font-size: 13px; color: var(--muted); margin-top: 6px; max-width: 980px; }
.tblwrap { overflow-x: auto; margin: 0 0 20px; max-height: 560px; overflow-y: auto; }
p.tcap { font-size: 13px; color: var(--muted); margin-bottom: 6px; max-width: 980px; }
table.tbl { border-collapse: collapse; font-size: 12.5px; font-variant-numeric: tabular-nums; }
table.tbl th { background: var(--bg-soft); position: sticky; top: 0; text-align: left; }
table.tbl th, table.tbl td { white-space: nowrap; border-bottom: 1px solid var(--line); padding: 3px 10px;
                             vertical-align: top; }
table.tbl tr:hover td { background: #fafbfd; }
table.facts { border-collapse: collapse; font-size: 13.5px; margin: 8px 0 16px; }
table.facts th { text-align: left; color: var(--muted); font-weight: 600; padding: 3px 18px 3px 0; }
table.facts td { padding: 3px 0; }
pre { background: var(--bg-soft); border: 1px solid var(--line); padding: 10px; font-size: 12px; overflow-x: auto; }
code { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 0.92em;
       background: var(--bg-soft); padding: 0 3px; border-radius: 3px; }
details { margin: 8px 0; } summary { cursor: pointer; color: var(--accent); }
.note { color: var(--muted); font-size: 13.5px; }
.missing { background: #fff8e6; border-left: 4px solid #e0a800; padding: 6px 12px; font-size: 13.5px; }
.attr { margin: 2px 0; font-size: 12px; line-height: 1.9; }
.warn, .warnlist { background: #fdecec; border-left: 4px solid #c62828; padding: 6px 12px; font-size: 13.5px; }
.warnlist { padding-left: 32px; }
.ok { background: #eaf6ec; border-left: 4px solid #2e7d32; padding: 6px 12px; font-size: 13.5px; }
.path { color: var(--muted); font-family: ui-monospace, monospace; font-size: 12.5px; }
footer { margin-top: 48px; color: var(--muted); font-size: 12px; border-top: 1px solid var(--line); padding-top: 8px; }
"""


def _render(sec: Section, depth: int) -> str:
    tag = f"h{min(depth, 5)}"
    body = "".join(sec.body) + "".join(_render(c, depth + 1) for c in sec.children)
    return f'<section id="{_e(sec.id)}"><{tag}>{_e(sec.title)}</{tag}>{body}</section>'


def _toc(sections: Sequence[Section]) -> str:
    def items(secs: Sequence[Section]) -> str:
        return "".join(f'<li><a href="#{_e(s.id)}">{_e(s.title)}</a>'
                       + (f"<ol>{items(s.children)}</ol>" if s.children else "") + "</li>" for s in secs)

    return f"<nav class=toc><b>Contents</b><ol>{items(sections)}</ol></nav>"


def _page(runs: Sequence[_RunData], sections: list[Section]) -> str:
    from rllc import __version__

    names = ", ".join(r.name for r in runs)
    if len(sections) == 1:  # one run: its subsections are the top-level sections
        sections = sections[0].children
    title = f"rllc report: {names}"
    intro = ("Refined local learning coefficients (rLLC) of attention heads over training "
             "(Wang et al. 2024, <i>Differentiation and Specialization of Attention Heads via the Refined Local "
             "Learning Coefficient</i>).")
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width, initial-scale=1'>"
            "<meta http-equiv=Content-Security-Policy content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>"
            f"<header class=top><h1>{_e(title)}</h1><p class=subtitle>{intro}</p></header>"
            f"{_toc(sections)}{''.join(_render(s, 2) for s in sections)}"
            f"<footer>Written by rllc {_e(__version__)}. Self-contained: figures are inline PNGs; the page loads "
            "nothing from the network.</footer></main></body></html>")
