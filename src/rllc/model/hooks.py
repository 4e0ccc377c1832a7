"""Hook points in the TransformerLens style: identity modules, named by their place in the module tree.

A hook point does nothing until a hook is attached, and hooks are attached only inside `hooks(...)`, a context
manager that always removes them, so an analysis can never leave a model silently patched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from rllc._errors import RllcError

# fn(activation, hook_name) -> new activation or None (None keeps the activation as it is).
HookFn = Callable[[torch.Tensor, str], torch.Tensor | None]


class HookPoint(nn.Module):
    """Identity module that hooks can read or replace; `name` is its dotted path in the model."""

    def __init__(self) -> None:
        super().__init__()
        self.name = ""
        self._fns: list[HookFn] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for fn in self._fns:
            out = fn(x, self.name)
            if out is not None:
                x = out
        return x

    @property
    def active(self) -> bool:
        """Whether any hook is attached (lets the model skip work no one reads)."""
        return bool(self._fns)


class HookedModule(nn.Module):
    """Base class that names its hook points and attaches hooks in a context manager."""

    def setup_hooks(self) -> None:
        """Name every HookPoint by its path; call at the end of `__init__`."""
        self.hook_points: dict[str, HookPoint] = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self.hook_points[name] = module

    @contextmanager
    def hooks(self, fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]]) -> Iterator[HookedModule]:
        """Attach hooks for the duration of a `with` block; they are removed on exit, even on error.

        Args:
            fwd_hooks: pairs (hook name, or a predicate on names; fn(activation, name) -> activation | None).
        """
        attached: list[tuple[HookPoint, HookFn]] = []
        try:
            for key, fn in fwd_hooks:
                names = [n for n in self.hook_points if key(n)] if callable(key) else [key]
                for n in names:
                    if n not in self.hook_points:
                        raise RllcError(f"unknown hook point {n!r}; names look like 'blocks.0.attn.hook_pattern'")
                    self.hook_points[n]._fns.append(fn)
                    attached.append((self.hook_points[n], fn))
            yield self
        finally:
            for hp, fn in attached:
                hp._fns.remove(fn)

    def run_with_cache(
        self, tokens: torch.Tensor, names: Sequence[str] | Callable[[str], bool] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run the model and return (logits, cache of activations by hook name), detached.

        Args:
            tokens: LongTensor (B, T).
            names: hook names to cache, a predicate on names, or None for all.
        """
        cache: dict[str, torch.Tensor] = {}

        def save(x: torch.Tensor, name: str) -> None:
            cache[name] = x.detach()

        if names is None:
            keys: list = [lambda n: True]
        elif callable(names):
            keys = [names]
        else:
            keys = list(names)
        with self.hooks([(k, save) for k in keys]):
            logits = self(tokens)
        return logits, cache
