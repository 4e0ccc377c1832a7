"""Sampler kernels: each a module with pure ``init(position) -> State`` and
``step(state, grad, noise, anchor, mask, hyper) -> (State, Info)`` (BlackJAX's shape), NamedTuple state and info,
``hyper(ε, nβ, γ, settings)`` building its hyperparameters, and ``DEFAULTS`` for its own settings.

Positions are (C, d): the moving coordinates of one component's C chains, flat; ``anchor`` is w* (d,), ``noise``
standard normal (C, d) from the chain's own stream, ``mask`` (C, 1) True for chains still alive (None: all).
Adding a kernel is one file here and one line in ``KERNELS``.
"""

from __future__ import annotations

from types import ModuleType

from rllc._errors import RllcError
from rllc.llc.kernels import rmsprop_sgld, sgld

KERNELS: dict[str, ModuleType] = {
    sgld.NAME: sgld,
    rmsprop_sgld.NAME: rmsprop_sgld,
}


def get_kernel(name: str) -> ModuleType:
    """The kernel module called ``name``; a one-line error naming the known ones otherwise."""
    try:
        return KERNELS[name]
    except KeyError:
        raise RllcError(f"unknown sampler {name!r}; known: {', '.join(sorted(KERNELS))}") from None
