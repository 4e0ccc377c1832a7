"""Per-token values shown in context as HTML: signed colour per token (susceptibilities, LLC contributions,
influence), and the top influencers of a query token. Drawing only: the numbers come from `rllc.llc.response`.

Token strings come from ``decode(token_id) -> str`` (e.g. ``lambda i: tok.id_to_token(i)`` for an HF tokenizer);
without one, ids are shown. Values are per predicted token (the loss at position t is of predicting token t+1), so
value[s, t] colours token t+1 of sequence s — the token whose loss it is.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence

import numpy as np

Decode = Callable[[int], str]


def _text(tid: int, decode: Decode | None) -> str:
    s = decode(int(tid)) if decode is not None else f"{int(tid)}·"
    return html.escape(s.replace("Ġ", " ").replace("Ċ", "⏎"), quote=True)


def _colour(v: float, scale: float) -> str:
    """Red for positive, blue for negative, alpha ∝ |v| / scale."""
    if not np.isfinite(v) or scale <= 0:
        return "transparent"
    a = min(1.0, abs(v) / scale)
    return f"rgba(214,39,40,{a:.2f})" if v > 0 else f"rgba(31,119,180,{a:.2f})"


def token_row_html(tokens: Sequence[int], values: Sequence[float] | None, *, decode: Decode | None = None,
                   scale: float | None = None, mark: int | None = None, start: int = 0, stop: int | None = None) -> str:
    """One sequence as coloured tokens.

    Args:
        tokens: (n_ctx,) token ids; values: (n_ctx − 1,) per predicted token (value t colours token t + 1), or None.
        decode: token id → string; scale: |value| of full colour (default: max |value| of the row).
        mark: a token position to outline (e.g. the query); start, stop: the window of positions shown.

    Returns:
        An HTML ``<span>`` fragment.
    """
    vals = None if values is None else np.asarray(values, dtype=float)
    if scale is None and vals is not None:
        finite = np.abs(vals[np.isfinite(vals)])
        scale = float(finite.max()) if finite.size else 0.0
    stop = len(tokens) if stop is None else stop
    parts = []
    for t in range(max(0, start), min(len(tokens), stop)):
        v = float(vals[t - 1]) if vals is not None and 1 <= t <= len(vals) else float("nan")
        style = f"background:{_colour(v, scale or 0.0)};"
        if mark is not None and t == mark:
            style += "outline:2px solid #222;"
        title = "" if not np.isfinite(v) else f' title="{v:+.4g}"'
        parts.append(f'<span style="{style}"{title}>{_text(tokens[t], decode)}</span>')
    return '<span class="tokens" style="font-family:monospace;white-space:pre-wrap">' + "".join(parts) + "</span>"


def top_tokens(values: np.ndarray, k: int = 10, *, largest: bool = True) -> list[tuple[int, int, float]]:
    """The k (sequence, position, value) with the largest (or smallest) finite values of a (n_seq, T) array."""
    v = np.asarray(values, dtype=float)
    flat = np.where(np.isfinite(v), v, -np.inf if largest else np.inf).reshape(-1)
    order = np.argsort(-flat if largest else flat)[:k]
    return [(*map(int, np.unravel_index(i, v.shape)), float(v.reshape(-1)[i])) for i in order if np.isfinite(flat[i])]


def top_tokens_html(tokens: np.ndarray, values: np.ndarray, k: int = 10, *, decode: Decode | None = None,
                    window: int = 12, largest: bool = True, title: str = "") -> str:
    """The k tokens with the largest values (e.g. per-token LLC contributions) each in its context window.

    Args:
        tokens: (n_seq, n_ctx) ids; values: (n_seq, n_ctx − 1) per predicted token.
        k, window: how many, and how many tokens of context each side; largest: or the smallest.

    Returns:
        An HTML fragment: a table of value and context with the token outlined.
    """
    scale = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 0.0
    rows = []
    for s, t, v in top_tokens(values, k, largest=largest):
        ctx = token_row_html(tokens[s], values[s], decode=decode, scale=scale, mark=t + 1, start=t + 1 - window,
                             stop=t + 2 + window)
        rows.append(f"<tr><td>{v:+.4g}</td><td>{s}:{t + 1}</td><td>{ctx}</td></tr>")
    head = f"<h4>{html.escape(title)}</h4>" if title else ""
    return (f'{head}<table class="tbl"><tr><th>value</th><th>seq:pos</th><th>in context</th></tr>'
            + "".join(rows) + "</table>")


def _label(pos: tuple[int, ...]) -> str:
    """"seq:token" of a flat BIF position (the token whose loss it is: predicted position + 1), or "seq"."""
    return str(pos[0]) if len(pos) == 1 else f"{pos[0]}:{pos[1] + 1}"


def influencers_html(result, query: int | tuple[int, int], k: int = 10, *, decode: Decode | None = None,  # noqa: ANN001
                     window: int = 12) -> str:
    """The query token and its k top influencers (``BIFResult.top``), each in context, coloured by its
    correlation with the query (token level; at sequence level each influencer's whole sequence is shown).

    Returns:
        An HTML fragment.
    """
    q = result.index(query)
    top = result.top(q, k)
    tokens = result.tokens
    if tokens is None:
        rows = "".join(f"<tr><td>{v:+.3f}</td><td>{_label(result.position(i))}</td><td></td></tr>" for i, v in top)
        return f'<table class="tbl"><tr><th>corr</th><th>sample</th><th></th></tr>{rows}</table>'
    row = result.correlation[q]

    def ctx(i: int) -> str:
        pos = result.position(i)
        s = pos[0]
        if result.level == "token":
            t = pos[1]
            vals = row.reshape(result.shape)[s]
            return token_row_html(tokens[s], vals, decode=decode, scale=1.0, mark=t + 1, start=t + 1 - window,
                                  stop=t + 2 + window)
        return token_row_html(tokens[s], None, decode=decode)

    rows = "".join(f"<tr><td>{v:+.3f}</td><td>{_label(result.position(i))}</td><td>{ctx(i)}</td></tr>"
                   for i, v in top)
    return (f"<p>query {_label(result.position(q))}: {ctx(q)}</p>"
            f'<table class="tbl"><tr><th>corr</th><th>seq:pos</th><th>in context</th></tr>{rows}</table>')


def format_influencers(result, query: int | tuple[int, int], k: int = 10, *,  # noqa: ANN001
                       decode: Decode | None = None, window: int = 6) -> str:
    """The query's top influencers as plain text lines (for printing): value, seq:pos, context with [token]."""
    tokens = result.tokens
    lines = []
    for i, v in [(result.index(query), float("nan"))] + result.top(query, k):
        pos = result.position(i)
        label = _label(pos)
        text = ""
        if tokens is not None and result.level == "token":
            s, t = pos[0], pos[1] + 1
            show = lambda j: (decode(int(tokens[s][j])) if decode else str(int(tokens[s][j])))  # noqa: E731
            text = "".join((f"[{show(j)}]" if j == t else show(j)) + ("" if decode else " ")
                           for j in range(max(0, t - window), min(len(tokens[s]), t + window + 1)))
        lines.append(("query" if np.isnan(v) else f"{v:+.3f}").rjust(7) + f"  {label:>7}  {text}")
    return "\n".join(lines)
