"""The random streams of an estimate, keyed by what they belong to — never by position in the call.

Every stream is a ``torch.Generator`` seeded from ``np.random.SeedSequence`` of (seed, data set, kind, …):

* minibatch indices of chain c: (seed, data, "batch", c) — shared by every component, so chain c of every
  component sees the same minibatches (common random numbers; the per-head strategy shares its w* forward);
* the noise of component q, chain c: (seed, data, "noise", identity of q, c);
* the minibatches averaged for L_n(w*): (seed, data, "init").

So a component's chains are the same whatever else is estimated beside it, and whichever gradient strategy runs
them. Draws are made in blocks of ``block`` steps (one generator call per block and chain) and consumed a step at a
time; the block size depends only on the stream's width, so every strategy reads the same numbers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

_BLOCK_ELEMENTS = 1 << 18  # numbers per (chain, block): blocks of up to 64 steps, fewer for wide components
_MAX_BLOCK = 64


def _words(text: str) -> list[int]:
    """A string as four 32-bit words (sha256), for SeedSequence entropy."""
    digest = hashlib.sha256(text.encode()).digest()
    return [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]


def stream_generator(seed: int, data_key: str, kind: str, *keys: int | str) -> torch.Generator:
    """The generator of one stream: SeedSequence(seed, words(data_key), words(kind), keys…)."""
    entropy = [int(seed) & 0xFFFFFFFF, *_words(data_key), *_words(kind)]
    for k in keys:
        entropy += _words(k) if isinstance(k, str) else [int(k)]
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


def _ids(chains: int | Sequence[int]) -> list[int]:
    return list(range(chains)) if isinstance(chains, int) else [int(c) for c in chains]


def block_steps(width: int) -> int:
    """Steps per draw block for a stream of ``width`` numbers per step (a function of the width only)."""
    return max(1, min(_MAX_BLOCK, _BLOCK_ELEMENTS // max(1, width)))


class NoiseStream:
    """Standard normal noise for C chains of one component: ``next()`` gives (C, width) for the next step.

    Args:
        seed, data_key: the estimate's seed and data-set key.
        identity: the component's canonical name (``component_key``).
        chains: C (chains 0 … C−1), or the chain indices themselves (a subset runs the same chains).
        width: numbers per chain per step (the component's moving coordinates).
        dtype: the noise dtype.
    """

    def __init__(self, seed: int, data_key: str, identity: str, chains: int | Sequence[int], width: int,
                 dtype: torch.dtype = torch.float32) -> None:
        self.gens = [stream_generator(seed, data_key, "noise", identity, c) for c in _ids(chains)]
        self.width, self.dtype, self.k = width, dtype, block_steps(width)
        self.buf = torch.empty(len(self.gens), self.k, width, dtype=dtype)
        self.row = self.k

    def next(self) -> torch.Tensor:
        if self.row == self.k:
            for c, g in enumerate(self.gens):
                self.buf[c] = torch.randn(self.k, self.width, generator=g, dtype=self.dtype)
            self.row = 0
        self.row += 1
        return self.buf[:, self.row - 1]


class BatchStream:
    """Minibatch indices for C chains: ``next()`` gives (C, batch_size) uniform draws with replacement from n.
    ``chains``: C, or the chain indices (as for ``NoiseStream``)."""

    def __init__(self, seed: int, data_key: str, chains: int | Sequence[int], n: int, batch_size: int) -> None:
        self.gens = [stream_generator(seed, data_key, "batch", c) for c in _ids(chains)]
        self.n, self.b, self.k = n, batch_size, block_steps(batch_size)
        self.buf = torch.empty(len(self.gens), self.k, batch_size, dtype=torch.long)
        self.row = self.k

    def next(self) -> torch.Tensor:
        if self.row == self.k:
            for c, g in enumerate(self.gens):
                self.buf[c] = torch.randint(self.n, (self.k, self.b), generator=g)
            self.row = 0
        self.row += 1
        return self.buf[:, self.row - 1]


def init_indices(seed: int, data_key: str, n: int, batches: int, batch_size: int) -> torch.Tensor:
    """(batches, batch_size) indices of the minibatches averaged for L_n(w*)."""
    return torch.randint(n, (batches, batch_size), generator=stream_generator(seed, data_key, "init"))


def noise_streams(seed: int, data_key: str, identities: Sequence[str], chains: int | Sequence[int], widths: Sequence[int],
                  dtype: torch.dtype = torch.float32) -> list[NoiseStream]:
    """One ``NoiseStream`` per component."""
    return [NoiseStream(seed, data_key, i, chains, w, dtype) for i, w in zip(identities, widths)]
