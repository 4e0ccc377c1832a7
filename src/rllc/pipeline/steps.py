"""Which checkpoints a command visits: the one step-spec parser every measure over checkpoints uses."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rllc._errors import RllcError


def select_steps(spec: str | Sequence[int] | None, available: Sequence[int], where: str = "the run") -> list[int]:
    """Checkpoint steps from a spec.

    Args:
        spec: "all" (or None), "last", "every:N" (checkpoints at multiples of N), "log:N" (N checkpoints spread
            evenly on a log step axis, always with the first and last), "S1,S2,..." or a list of ints.
        available: the run's checkpoint steps.
    """
    avail = sorted(available)
    if not avail:
        raise RllcError(f"{where} has no checkpoints; train it first")
    if spec is None or spec == "all":
        return avail
    if isinstance(spec, str):
        s = spec.strip()
        if s == "last":
            return [avail[-1]]
        if s.startswith(("every:", "log:")):
            kind, _, n = s.partition(":")
            try:
                k = int(n)
            except ValueError:
                k = 0
            if k < 1:
                raise RllcError(f"bad step spec {spec!r}; use {kind}:N with a positive integer N")
            if kind == "every":
                out = [x for x in avail if x % k == 0]
                if not out:
                    raise RllcError(f"no checkpoint of {where} is a multiple of {k}; see `rllc info`")
                return out
            if k >= len(avail):
                return avail
            pos = np.log1p(np.asarray(avail, dtype=float))  # log(1 + step): step 0 has a place
            targets = np.linspace(pos[0], pos[-1], k)
            chosen = {avail[int(np.argmin(np.abs(pos - t)))] for t in targets}
            # nearest-checkpoint collisions at the dense start: top up with the most isolated remaining steps
            while len(chosen) < k:
                rest = [x for x in avail if x not in chosen]
                cl = np.log1p(sorted(chosen))
                gap = [np.min(np.abs(cl - np.log1p(x))) for x in rest]
                chosen.add(rest[int(np.argmax(gap))])
            return sorted(chosen)
        try:
            steps = [int(x) for x in s.split(",") if x.strip()]
        except ValueError:
            raise RllcError(f"bad step spec {spec!r}; use all, last, every:N, log:N or S1,S2,...") from None
        if not steps:  # "" or ",": a forgotten value, not a request for nothing
            raise RllcError(f"no step given in step spec {spec!r}; use all, last, every:N, log:N or S1,S2,...")
    else:
        steps = [int(x) for x in spec]
    missing = [x for x in steps if x not in set(avail)]
    if missing:
        near = min(avail, key=lambda a: abs(a - missing[0]))
        raise RllcError(f"{where} has no checkpoint at step {missing[0]}; nearest is {near} (see `rllc info`)")
    return sorted(set(steps))


def spaced_steps(steps: Sequence[int], min_gap: float) -> list[int]:
    """Thin a checkpoint list so that no two kept steps lie closer than ``min_gap`` in ln(1 + step): walking up
    from the first step, a step is kept when it is at least ``min_gap`` past the last kept one; the last step is
    always kept. Where the schedule is already that sparse every checkpoint stays.

    Args:
        steps: checkpoint steps (any order; duplicates ignored).
        min_gap: the smallest kept spacing in ln(1 + step); 0 keeps every step.

    Returns:
        The kept steps, ascending.
    """
    if not min_gap >= 0:
        raise RllcError(f"min_gap must be a non-negative number, got {min_gap!r}")
    avail = sorted(set(int(s) for s in steps))
    if not avail:
        return []
    kept = [avail[0]]
    for s in avail[1:]:
        if np.log1p(s) - np.log1p(kept[-1]) >= min_gap * (1 - 1e-9):
            kept.append(s)
    if kept[-1] != avail[-1]:
        kept.append(avail[-1])
    return kept
