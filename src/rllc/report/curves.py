"""`rllc plot`: LLC curves over training from a run's results store (PNG, matplotlib Agg).

Figures, one per (data set, sampler config):
  heads_<data>_<hash>.png   per-head rLLC over training (log step axis), one panel per layer, a colour per head,
                            shaded ±1 s.d. across chains: wrLLC on the pre-training data, wdrLLC on another data
                            set, model-as-generator wdrLLC for a `model:` data set
  full_<hash>.png           the full-model LLC (one line per data set: LLC / drLLC) beside the training loss
Every figure of a config hash is shaded with the developmental stages of that config's full-model LLC on the
pre-training data (`rllc.analysis.stages`), when it has one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from rllc._errors import RllcError, check_writable, writing  # noqa: E402
from rllc.model.components import head_index, is_head_name  # noqa: E402
from rllc.report.plots import draw_loss  # noqa: E402
from rllc.pipeline.data import is_model_spec  # noqa: E402
from rllc.pipeline.store import ResultStore, load_results  # noqa: E402


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", s).strip("_")[:40] or "data"


def _settings(cfg: dict) -> str:
    s = cfg.get("sampler", {})
    return (f"ε={s.get('epsilon'):g} nβ={s.get('nbeta'):g} γ={s.get('gamma'):g} chains={s.get('chains')} "
            f"draws={s.get('draws')} batch={s.get('batch_size')} n={cfg.get('n_samples')}") if s else ""


def _kind(data: str, heads: bool) -> str:
    if is_model_spec(data):
        return "model-as-generator " + ("wdrLLC" if heads else "drLLC")
    if data == "pretrain":
        return "wrLLC" if heads else "LLC"
    return "wdrLLC" if heads else "drLLC"


def _band(ax, g: pd.DataFrame, **kw) -> None:  # noqa: ANN001
    x = g["step"].clip(lower=1).to_numpy()
    y = g["value"].to_numpy(dtype=float)
    sd = np.nan_to_num(g["std"].to_numpy(dtype=float))
    (line,) = ax.plot(x, y, lw=1.3, **kw)
    ax.fill_between(x, y - sd, y + sd, color=line.get_color(), alpha=0.18, lw=0)
    bad = ~g["valid"].to_numpy(dtype=bool)
    if bad.any():
        ax.plot(x[bad], y[bad], "x", color=line.get_color(), ms=4)


def _stages(df: pd.DataFrame):  # noqa: ANN202 - Stages | None
    """Stages of the full-model LLC on pretrain among `df` (one config hash), or None when there is no such curve."""
    from rllc.analysis.stages import curve_stages

    full = df[(df["component"] == "all") & (df["data"] == "pretrain")]
    if full["step"].nunique() < 3:
        return None
    try:
        return curve_stages(full)
    except RllcError:  # e.g. too few valid estimates: the figure goes without stages
        return None


def _with_note(title: str, stages) -> str:  # noqa: ANN001
    from rllc.report.comparisons import with_stages_note

    return with_stages_note(title, stages)


def _shade(ax, stages) -> None:  # noqa: ANN001
    if stages is not None:
        from rllc.report.comparisons import shade_stages

        shade_stages(ax, stages)


def plot_heads(df: pd.DataFrame, path: str | Path, *, title: str, stages=None) -> Path:  # noqa: ANN001
    """Per-head curves: one panel per layer, a colour per head, shaded ±1 s.d. across chains.

    Args:
        df: rows of one run, data set and config hash with head components "l:h" (columns step, component,
            value, std, valid).
        stages: optional `Stages` to shade (those of the full-model LLC).
    """
    path = Path(path)
    layers = sorted({head_index(c)[0] for c in df["component"]})
    fig, axes = plt.subplots(1, len(layers), figsize=(5.2 * len(layers), 3.8), dpi=120, squeeze=False,
                             sharey=True)
    cmap = plt.get_cmap("tab10")
    for ax, layer in zip(axes[0], layers):
        sub = df[[head_index(c)[0] == layer for c in df["component"]]]
        comps = sorted(sub["component"].unique(), key=lambda c: head_index(c)[1])
        for i, comp in enumerate(comps):
            _band(ax, sub[sub["component"] == comp].sort_values("step"), color=cmap(i % 10), label=comp)
        ax.set_xscale("log")
        ax.set_xlabel("training step (step 0 drawn at 1)")
        ax.set_title(f"layer {layer}", fontsize=9, pad=14)  # room for the stage labels
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2, title="head l:h", title_fontsize=7)
        _shade(ax, stages)
    axes[0][0].set_ylabel("λ̂ (shaded: ±1 s.d. across chains; x: invalid)")
    fig.suptitle(_with_note(title, stages), fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_full(df: pd.DataFrame, run, path: str | Path, *, title: str, stages=None) -> Path:  # noqa: ANN001
    """The full-model LLC per data set (right) beside the training and validation loss (left); `stages` (optional)
    are shaded on both."""
    path = Path(path)
    fig, (ax_loss, ax_llc) = plt.subplots(1, 2, figsize=(10.5, 3.8), dpi=120)
    if run is not None:
        draw_loss(ax_loss, run, legend_size=7)
    else:
        ax_loss.set_xscale("log")
        ax_loss.set_xlabel("training step")
        ax_loss.set_ylabel("next-token loss (nats)")
        ax_loss.grid(alpha=0.3)
    ax_loss.set_title("loss", fontsize=9, pad=14)
    for data, g in df.groupby("data", sort=True):
        _band(ax_llc, g.sort_values("step"), label=f"{_kind(data, False)} on {data}")
    ax_llc.set_xscale("log")
    ax_llc.set_xlabel("training step")
    ax_llc.set_ylabel("λ̂ of the full model (±1 s.d. across chains)")
    ax_llc.set_title("full-model LLC", fontsize=9, pad=14)
    ax_llc.grid(alpha=0.3)
    ax_llc.legend(fontsize=7)
    for ax in (ax_loss, ax_llc):
        _shade(ax, stages)
    fig.suptitle(_with_note(title, stages), fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_sweep(run_dir: str | Path | Iterable[str | Path], out: str | Path | None = None, *,
               config_hash: str | None = None) -> list[Path]:
    """Write every LLC figure of one or several runs' results stores.

    Args:
        run_dir: a run directory or several (figures per run).
        out: output directory (default: `RUN_DIR/plots`).
        config_hash: only these settings (default: every config hash in the store, one figure each).

    Returns:
        The PNG paths written.
    """
    from rllc.train import load_run

    dirs = [run_dir] if isinstance(run_dir, (str, Path)) else list(run_dir)
    written: list[Path] = []
    for d in dirs:
        d = Path(d)
        df = load_results(d, with_extra=True)
        df = df[df["measure"] == "llc"]
        if config_hash is not None:
            hashes = sorted(df["config_hash"].unique())
            df = df[df["config_hash"] == config_hash]
            if df.empty and hashes:  # the run has LLC results, under other settings
                raise RllcError(f"{d} has no LLC results for config {config_hash!r}; its config hashes: "
                                f"{', '.join(hashes)} (`rllc export` lists their settings)")
        if df.empty:
            raise RllcError(f"{d} has no LLC results{' for config ' + config_hash if config_hash else ''}; run "
                            f"`rllc sweep {d}` first")
        configs = ResultStore(d, readonly=True).configs()
        try:
            run = load_run(d)
        except RllcError:
            run = None
        out_dir = Path(out) if out is not None else d / "plots"
        if len(dirs) > 1 and out is not None:
            out_dir = out_dir / d.name
        check_writable(out_dir, "cannot write the figures; pass --out a writable folder")
        with writing(out_dir, what="figures"):
            out_dir.mkdir(parents=True, exist_ok=True)
        head_mask = df["component"].map(is_head_name).astype(bool)
        stages = {h: _stages(g) for h, g in df.groupby("config_hash")}
        for (chash, data), g in df[head_mask].groupby(["config_hash", "data"]):
            title = (f"{d.name}: per-head {_kind(data, True)} on {data}\n"
                     f"{_settings(configs.get(chash, {}))}  [config {chash}]")
            written.append(plot_heads(g, out_dir / f"heads_{_slug(data)}_{chash}.png", title=title,
                                      stages=stages[chash]))
        for chash, g in df[df["component"] == "all"].groupby("config_hash"):
            title = f"{d.name}: full-model LLC and loss\n{_settings(configs.get(chash, {}))}  [config {chash}]"
            written.append(plot_full(g, run, out_dir / f"full_{chash}.png", title=title, stages=stages[chash]))
    return written
