"""Minibatches for the sampler: one source of samples, indexed by a torch.Generator the sampler owns."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset
from torch.utils.data._utils.collate import default_collate
from torch.utils._pytree import tree_map

from rllc._errors import RllcError


class BatchSource:
    """Uniform access to ``data`` given as a tensor, a tuple/list of tensors, a map-style Dataset or a DataLoader.

    The first dim of every tensor indexes samples. A DataLoader contributes its dataset and ``collate_fn`` only:
    the sampler draws its own indices so that the draws are reproducible from the sampler's seed, and its batch
    size comes from the sampler config.

    Draws are uniform *with replacement* (``torch.randint``), independently for every chain and step. When
    ``batch_size >= n`` the sampler uses the whole data set every step instead (full-batch, no resampling).
    """

    def __init__(self, data: Any, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.collate = default_collate
        self.tensors: tuple[torch.Tensor, ...] | None = None
        self.single = False
        self.dataset: Dataset | None = None
        if isinstance(data, DataLoader):
            self.collate = data.collate_fn or default_collate
            data = data.dataset
        if isinstance(data, torch.Tensor):
            self.tensors, self.single = (data,), True
        elif isinstance(data, (tuple, list)) and data and all(isinstance(t, torch.Tensor) for t in data):
            self.tensors = tuple(data)
        elif isinstance(data, TensorDataset) and self.collate is default_collate:
            self.tensors = tuple(data.tensors)
        elif isinstance(data, IterableDataset):
            raise RllcError("data is an IterableDataset; the LLC sampler needs random access: pass a map-style "
                            "Dataset, a tensor, or a tuple of tensors")
        elif isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
            self.dataset = data
        else:
            raise RllcError(f"data of type {type(data).__name__} is not supported; pass a tensor, a tuple of tensors, "
                            "a map-style Dataset or a DataLoader")
        if self.tensors is not None:
            n = {len(t) for t in self.tensors}
            if len(n) != 1:
                raise RllcError(f"data tensors disagree on the number of samples (first dims {sorted(n)}); "
                                "make them equal")
            self.n = n.pop()
            self.tensors = tuple(t.to(self.device) for t in self.tensors)
        else:
            self.n = len(self.dataset)  # type: ignore[arg-type]
        if self.n < 1:
            raise RllcError("data holds no samples; pass at least one")

    @property
    def key(self) -> str:
        """The data set's identity for the random streams: a digest of the tensors' shapes, dtypes and contents,
        or the dataset's type and size (a Dataset is not read to key it)."""
        import hashlib

        if self.tensors is None:
            return f"dataset:{type(self.dataset).__qualname__}:{self.n}"
        h = hashlib.sha256()
        for t in self.tensors:
            c = t.detach().cpu().contiguous()
            h.update(f"{tuple(c.shape)}{c.dtype}".encode())
            h.update(c.view(torch.uint8).numpy().tobytes() if c.numel() else b"")
        return "tensors:" + h.hexdigest()[:16]

    def _take(self, idx: torch.Tensor) -> Any:
        """The samples at ``idx`` (any shape S), as a batch whose tensors have leading dims S."""
        if self.tensors is not None:
            idx = idx.to(self.device)
            out = tuple(t[idx] for t in self.tensors)
            return out[0] if self.single else out
        flat = idx.reshape(-1).tolist()
        batch = self.collate([self.dataset[i] for i in flat])  # type: ignore[index]
        shape = tuple(idx.shape)
        return tree_map(lambda t: t.reshape(*shape, *t.shape[1:]).to(self.device) if isinstance(t, torch.Tensor) else t,
                        batch)

    def full(self) -> Any:
        """All n samples as one batch."""
        if self.tensors is not None:
            return self.tensors[0] if self.single else self.tensors
        return self._take(torch.arange(self.n))

    def draw(self, gen: torch.Generator, shape: tuple[int, ...]) -> Any:
        """Uniform draws with replacement: a batch with leading dims ``shape`` (e.g. (chains, batch_size))."""
        return self._take(torch.randint(self.n, shape, generator=gen))
