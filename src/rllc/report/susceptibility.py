"""The report's susceptibility section: drawing only (the numbers are `rllc.analysis.susceptibility`'s).

  - the response matrix (heads × probes) at checkpoints across training, as heat maps, and its leading singular
    values over training;
  - per-head susceptibility curves per probe beside the same chains' rLLC curves;
  - the ground-truth check on labelled synthetic probes (ROC AUC per typed head) and the agreement of the
    response-matrix clusters with the behavioural head types (adjusted Rand index);
  - per-token attributions in context: the probe's tokens with a signed colour per token.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from rllc.analysis.susceptibility import (  # noqa: E402
    SUSCEPTIBILITY, check_run, response_matrices, response_svd, select_rows,
)
from rllc.model.components import head_index, is_head_name  # noqa: E402
from rllc.report.attributions import token_row_html  # noqa: E402

_MAX_HEATMAPS = 6
_LAYER_CMAPS = ("Blues", "Reds", "Greens", "Purples")


def _spread(steps: Sequence[int], k: int) -> list[int]:
    steps = sorted(steps)
    if len(steps) <= k:
        return steps
    idx = np.unique(np.round(np.linspace(0, len(steps) - 1, k)).astype(int))
    return [steps[i] for i in idx]


def plot_response(matrices: Mapping[int, pd.DataFrame], *, max_panels: int = _MAX_HEATMAPS) -> plt.Figure:
    """Heat maps of the response matrix (heads × probes) at up to `max_panels` checkpoints spread over training,
    one shared signed colour scale, and the leading singular values of each checkpoint's (column-centred) matrix
    over training."""
    steps = _spread(list(matrices), max_panels)
    vmax = max(float(np.nanmax(np.abs(matrices[s].to_numpy()))) for s in steps) or 1.0
    fig = plt.figure(figsize=(2.1 * len(steps) + 3.6, 3.4))
    grid = fig.add_gridspec(1, len(steps) + 1, width_ratios=[1] * len(steps) + [1.7])
    first = fig.add_subplot(grid[0, 0])
    axes = [first, *(fig.add_subplot(grid[0, i], sharey=first) for i in range(1, len(steps))),
            fig.add_subplot(grid[0, len(steps)])]
    for ax, s in zip(axes, steps):
        m = matrices[s]
        im = ax.imshow(m.to_numpy(), cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
        ax.set_title(f"step {s}", fontsize=8)
        ax.set_xticks(range(m.shape[1]), [_short(p) for p in m.columns], rotation=60, fontsize=6, ha="right")
        if ax is axes[0]:
            ax.set_yticks(range(m.shape[0]), list(m.index), fontsize=6)
            ax.set_ylabel("head", fontsize=7)
        else:
            ax.tick_params(labelleft=False)
        ax.set_xlabel("probe", fontsize=7)
    fig.colorbar(im, ax=list(axes[: len(steps)]), shrink=0.8, label="mean χ per probe token")
    ax = axes[-1]
    all_steps = sorted(matrices)
    svals = np.array([response_svd(matrices[s].to_numpy())[1] for s in all_steps])  # (steps, r)
    for i in range(min(3, svals.shape[1])):
        ax.plot(all_steps, svals[:, i], marker=".", label=f"σ{i + 1}")
    ax.set_xscale("symlog", linthresh=max(1, min([s for s in all_steps if s > 0], default=1)))
    ax.set_xlim(left=0)
    ax.set_xlabel("step", fontsize=8)
    ax.set_title("leading singular values", fontsize=8)
    ax.set_ylabel("singular value", fontsize=8)
    ax.tick_params(labelsize=6)
    ax.legend(fontsize=6)
    return fig


def _short(probe: str, n: int = 18) -> str:
    return probe if len(probe) <= n else "…" + probe[-(n - 1):]


def _colour(comp: str, heads: Sequence[str]) -> Any:
    layer, h = head_index(comp)
    n = max(sum(1 for c in heads if head_index(c)[0] == layer), 1)
    return plt.get_cmap(_LAYER_CMAPS[layer % len(_LAYER_CMAPS)])(0.45 + 0.5 * h / max(n - 1, 1))


def plot_curves(sus: pd.DataFrame, llc: pd.DataFrame, types: Mapping[str, str]) -> plt.Figure:
    """Per-head mean susceptibility over training, one panel per probe (± its standard error over chains), and
    the same chains' rLLC in the first panel. Lines are coloured by layer, labelled with the head type."""
    s = sus[sus.measure.str.startswith(SUSCEPTIBILITY)]
    heads = sorted({c for c in s.component if is_head_name(c)}, key=head_index)
    probes = list(dict.fromkeys(s.probe))
    fig, axes = plt.subplots(1, len(probes) + 1, figsize=(3.0 * (len(probes) + 1), 3.0), sharex=True)
    for comp in heads:
        kw = dict(color=_colour(comp, heads), lw=1.2, marker=".", ms=3)
        lab = f"{comp} {types.get(comp, '')}".strip()
        d = llc[(llc.component == comp)].sort_values("step")
        axes[0].plot(d.step, d.value, label=lab, **kw)
        for ax, p in zip(axes[1:], probes):
            d = s[(s.component == comp) & (s.probe == p)].sort_values("step")
            ax.plot(d.step, d.value, **kw)
            if d["std"].notna().any():
                ax.fill_between(d.step, d.value - d["std"], d.value + d["std"], color=kw["color"], alpha=0.15, lw=0)
    axes[0].set_title("rLLC λ̂ (same chains)", fontsize=8)
    axes[0].set_ylabel("λ̂", fontsize=8)
    for ax, p in zip(axes[1:], probes):
        ax.set_title(f"χ on {_short(p, 28)}", fontsize=8)
        ax.set_ylabel("mean χ per token", fontsize=8)
        ax.axhline(0, color="0.6", lw=0.6)
    steps = sorted(set(s.step))
    for ax in axes:
        ax.set_xscale("symlog", linthresh=max(1, min([x for x in steps if x > 0], default=1)))
        ax.set_xlim(left=0)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=6)
    axes[0].legend(fontsize=5, ncol=2)
    fig.tight_layout()
    return fig


def section(doc: Any, r: Any) -> list[str]:
    """The report's section for one run (`doc`: the report's numbering; `r`: its run data). Empty-handed runs get
    the command that measures them."""
    from rllc.pipeline.store import ResultStore

    sus, data, chash = select_rows(r.results)
    if sus.empty:
        return [f"<p class=missing>No susceptibilities stored. Measure them with <code>rllc susceptibility "
                f"{html.escape(str(r.path))} --components heads --probes code,prose,synthetic.induction "
                "--steps log:12</code> (or give a sweep <code>--probes</code>).</p>"]
    settings = r.configs.get(chash, {})
    llc_hash = settings.get("sweep_hash")
    llc = r.results[(r.results.measure == "llc") & (r.results.data == data) & (r.results.config_hash == llc_hash)]
    sampler = settings.get("sampler", {})
    pr = settings.get("probes", {})
    out = [f"<p>Susceptibilities χ_i = −Cov(φ, ℓ_i − L) of each head's loss shift φ on <code>{html.escape(data)}"
           f"</code> to every token i of {len(pr.get('keys', []))} probe data sets ({pr.get('n_samples', '?')} "
           f"{pr.get('split', '?')} windows each), from the chains of the rLLC itself ({sampler.get('chains', '?')} "
           f"chains × {sampler.get('draws', '?')} draws, batch {sampler.get('batch_size', '?')}; settings "
           f"{html.escape(chash)}). Negative χ_i: the token's loss rises with the head's loss shift, the tokens the "
           "head helps predict.</p>"]
    mats = response_matrices(sus[sus.measure.str.startswith(SUSCEPTIBILITY)],
                             components=sorted({c for c in sus.component if is_head_name(c)}, key=head_index))
    if mats:
        fig = plot_response(mats)
        out.append(doc.figure(_png(fig), "Response matrix (heads × probes) of mean susceptibilities at checkpoints "
                              "spread over training, and the leading singular values of each checkpoint's matrix "
                              "(columns centred over heads).", "response matrix heat maps"))
    fig = plot_curves(sus, llc, r.types)
    out.append(doc.figure(_png(fig), "Per-head rLLC (first panel) and mean susceptibility to each probe over "
                          "training, from the same chains; shading ± one standard error over chains.",
                          "susceptibility curves"))
    out += _ground_truth(doc, r)
    out += _attributions(doc, r, sus, ResultStore(r.path, readonly=True), pr)
    return out


def _png(fig: plt.Figure) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _ground_truth(doc: Any, r: Any) -> list[str]:
    gt = check_run(r.path, results=r.results)
    if gt is None:
        return []
    out = [f"<p class=note>{html.escape(n)}</p>" for n in gt.notes]
    if len(gt.aucs):
        out.append(doc.table(gt.aucs, f"Ground truth at step {gt.step}: ROC AUC of ranking each labelled synthetic "
                                      "probe's positions by −χ against the positions whose prediction the head's "
                                      "type implements (induction and previous-token heads: INDUCTION|REPEAT); "
                                      "1 is a perfect ranking, 0.5 none, the target 0.8; sampler: "
                                      f"{gt.sampler}. auc_standardized ranks by −r, r_i = −Corr(φ, ℓ_i) (χ_i's "
                                      "token-dependent part without the token's own posterior spread, which "
                                      "otherwise ranks the badly predicted tokens first for every head). "
                                      "auc_contribution ranks "
                                      "by the per-token LLC contribution instead; chi_snr is the median |χ_i − "
                                      "mean χ| / s.e. over the probe's tokens (pure noise with 4 chains: ~0.8; "
                                      "the median token's χ is near zero, so it stays low even when the large "
                                      "values are resolved). Beside them: auc_ablation ranks by the head's own "
                                      "per-token mean-ablation effect at w* (what a score measuring exactly what "
                                      "the head does to each token's loss reaches), auc_loss by −ℓ_i(w*), the "
                                      "loss alone (the same for every head: the labelled positions are the "
                                      "well-predicted ones)."))
    if len(gt.controls):
        out.append(doc.table(gt.controls, "Control heads (types without a labelled pattern), ranked against the same "
                                          "positions: a score specific to what a head does is high for its own "
                                          "head and not for these."))
    if gt.ari is not None:
        k = gt.clusters.type.nunique()
        out.append(doc.table(gt.clusters, f"Heads clustered (k-means, k = {k} types) on the two leading singular "
                                          f"vectors of the response matrix over {gt.checkpoints} checkpoints (each "
                                          f"checkpoint's block at unit norm): adjusted Rand index against the "
                                          f"behavioural types {gt.ari:.2f} (1: the same partition, 0: chance)."))
    return out


def _attributions(doc: Any, r: Any, sus: pd.DataFrame, store: Any, pr: Mapping[str, Any], *,
                  n_seq: int = 2) -> list[str]:
    """Per-token χ of each head on the first sequences of each probe at the last checkpoint, in context."""
    if r.run is None:
        return []
    tok = r.run.tokenizer
    last = int(sus.step.max())
    d = sus[(sus.step == last) & sus.measure.str.startswith(SUSCEPTIBILITY)]
    heads = sorted({c for c in d.component if is_head_name(c)}, key=head_index)
    blocks = []
    for key in pr.get("keys", []):
        rows = d[d.probe == key]
        arrays = {c: store.arrays((last, c, x.data, x.measure, x.config_hash))
                  for c, x in zip(rows.component, rows.itertuples()) if c in heads}
        if not arrays:
            continue
        any_a = next(iter(arrays.values()))
        if "tokens" not in any_a:
            continue
        tokens = any_a["tokens"]
        scale = max(float(np.nanmax(np.abs(a["chi"][:n_seq]))) for a in arrays.values())
        parts = [f"<h4>{html.escape(key)}</h4>"]
        for i in range(min(n_seq, len(tokens))):
            for c in heads:
                if c in arrays:
                    row = token_row_html(tokens[i], arrays[c]["chi"][i], decode=tok.id_to_token, scale=scale)
                    parts.append(f"<div class=attr><b>{html.escape(c)}</b> {row}</div>")
        blocks.append("".join(parts))
    if not blocks:
        return []
    return [f"<p>Per-token susceptibilities at step {last} in context (blue: χ < 0, the token's loss rises with "
            "the head's loss shift; red: χ > 0; one colour scale per probe; the colour sits on the predicted "
            "token; hover for the value).</p>", *blocks]
