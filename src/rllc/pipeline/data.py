"""Data sets of a sweep: a data spec names the samples an LLC is measured on and the loss it uses.

Two kinds of spec:
  any spec `Run.sample_tokens` accepts   "pretrain" (the run's own mixture), "code", "prose", "synthetic.dyck",
                                         a path, a mixture "prose*0.5,code*0.5", ...: next-token loss on it
  "model:PATH_TO_RUN@STEP"               the model-as-generator drLLC (Wang et al. 2024 §4.3, App. F.3 eq. 11):
                                         contexts from the swept run's pre-training data, loss = cross-entropy
                                         against the reference model's predictions (`soft_target_loss`). STEP may
                                         be "last". The reference must share the swept run's tokenizer.

A list of specs on the command line is comma-separated; consecutive weighted parts ("x*w") stay together as one
mixture, so "pretrain,code,prose*0.5,code*0.5" is three data sets. ";" separates specs explicitly.

The results store keys a data set by what it resolves to, not by how it was spelled (`data_key`): a reference
model by its run directory's absolute path and its step (`model:runs/ref@last` and `model:/abs/runs/ref@5000` are
one key once "last" is 5000); a path by its absolute location and a fingerprint of its files' bytes
(`/abs/corpus#1a2b3c4d`: editing a file makes a new key); a mixture by its parts with weights normalised to 1.
Named sources ("pretrain", "code", "synthetic.dyck", ...) are their own key.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from rllc._errors import RllcError
from rllc.llc.losses import LossFn, next_token_loss, soft_target_loss

MODEL_PREFIX = "model:"


@dataclass(frozen=True)
class ModelRef:
    """A reference model used as a data generator: `model:PATH@STEP`."""

    path: Path
    step: int | None  # None: the run's last checkpoint

    @classmethod
    def parse(cls, spec: str) -> ModelRef:
        body = spec[len(MODEL_PREFIX):]
        path, sep, step = body.rpartition("@")
        if not sep or not path:
            raise RllcError(f"bad data spec {spec!r}; write model:PATH_TO_RUN@STEP (STEP an integer or 'last')")
        if step == "last":
            return cls(Path(path), None)
        try:
            return cls(Path(path), int(step))
        except ValueError:
            raise RllcError(f"bad step {step!r} in data spec {spec!r}; use an integer or 'last'") from None


def is_model_spec(spec: str) -> bool:
    return spec.startswith(MODEL_PREFIX)


def split_data_specs(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Data set specs from a comma- or semicolon-separated string (or a list, returned as is)."""
    if not isinstance(spec, str):
        out = [str(s).strip() for s in spec]
    elif ";" in spec:
        out = [s.strip() for s in spec.split(";")]
    else:
        out = []
        for part in (p.strip() for p in spec.split(",")):
            if "*" in part and out and "*" in out[-1].rsplit(",", 1)[-1] and not is_model_spec(out[-1]):
                out[-1] = f"{out[-1]},{part}"  # the next part of one weighted mixture
            else:
                out.append(part)
    out = [s for s in out if s]
    if not out:
        raise RllcError("no data set given; try --data pretrain,code")
    if len(set(out)) != len(out):
        raise RllcError(f"data set listed twice in {spec!r}")
    return out


def load_reference(run, spec: str):  # noqa: ANN001, ANN201 - (Run, str) -> (Transformer, int)
    """The reference model of a `model:PATH@STEP` spec and its step, checked against `run`'s tokenizer."""
    from rllc.train import load_run

    ref = ModelRef.parse(spec)
    ref_run = load_run(ref.path)
    if ref_run.config.tokenizer_id != run.config.tokenizer_id:
        raise RllcError(f"reference run {ref.path} has tokenizer {ref_run.config.tokenizer_id!r} but {run.path} has "
                        f"{run.config.tokenizer_id!r}; train the reference with the same tokenizer")
    steps = ref_run.steps
    if not steps:
        raise RllcError(f"reference run {ref.path} has no checkpoints yet")
    step = steps[-1] if ref.step is None else ref.step
    return ref_run.model_at(step), step


def check_data_spec(run, spec: str) -> None:  # noqa: ANN001
    """Cheap up-front validation on the driver (nothing is tokenised or loaded but configs and tokenizers)."""
    run.tokenizer  # noqa: B018 - checks tokenizer.json is the run's own (before any stored row is trusted)
    if not is_model_spec(spec) and spec != "pretrain":  # the run's own data were checked when it trained
        from rllc.data import iter_documents, parse_data_spec
        from rllc.data.corpora import is_user_source

        for part in parse_data_spec(spec).parts:
            if is_user_source(part.source) and not part.source.startswith("hf:"):
                iter_documents(part.source)  # a missing path fails here, before anything is stored
    if is_model_spec(spec):
        from rllc.train import load_run

        ref = ModelRef.parse(spec)
        ref_run = load_run(ref.path)
        ref_run.tokenizer  # noqa: B018 - and the reference's
        if ref_run.config.tokenizer_id != run.config.tokenizer_id:
            raise RllcError(f"reference run {ref.path} has tokenizer {ref_run.config.tokenizer_id!r} but "
                            f"{run.path} has {run.config.tokenizer_id!r}; train the reference with the same "
                            "tokenizer")
        if ref.step is not None:
            ref_run._check_step(ref.step)
        if ref_run.config.model.d_vocab != run.config.model.d_vocab:
            raise RllcError(f"reference run {ref.path} has vocabulary {ref_run.config.model.d_vocab}, "
                            f"{run.path} has {run.config.model.d_vocab}")


def resolve_data(run, spec: str, n_samples: int, *, seed: int = 0,  # noqa: ANN001
                 split: str = "train") -> tuple[torch.Tensor, LossFn]:
    """The samples (n_samples, n_ctx) and loss function a data spec stands for.

    Args:
        run: the swept `Run`.
        spec: a data spec (see the module docstring).
        n_samples: windows to draw (seeded by `seed`) from the data.
        split: "train" (the paper's L_n) or "val".

    Returns:
        (tokens, loss_fn): tokens LongTensor (n_samples, n_ctx); loss_fn(model, batch) -> scalar.
    """
    if is_model_spec(spec):
        reference, _ = load_reference(run, spec)
        tokens = run.sample_tokens("pretrain", n_samples, split=split, seed=seed)
        return tokens, soft_target_loss(reference)
    return run.sample_tokens(spec, n_samples, split=split, seed=seed), next_token_loss


def probe_labels(run, spec: str, n_samples: int, *, seed: int = 0, split: str = "train"):  # noqa: ANN001, ANN201
    """The Pattern labels (n_samples, n_ctx) int32 of the windows `resolve_data(run, spec, n_samples, seed=seed,
    split=split)` returns, for a spec of one synthetic family ("synthetic.induction"); None for any other data."""
    from rllc.data.dataset import SyntheticDataset

    if is_model_spec(spec):
        return None
    ds = run.dataset(spec, split=split)
    if not isinstance(ds, SyntheticDataset):
        return None
    return ds.sample_labelled(n_samples, torch.Generator().manual_seed(seed)).labels.numpy()


# ------------------------------------------------------------------------------------------------ data keys


@dataclass(frozen=True)
class DataKey:
    """A data set as the store keys it.

    Attributes:
        key: the canonical name written in the store's `data` column.
        spec: the spec a worker resolves (absolute paths, the reference's step made explicit).
    """

    key: str
    spec: str


_FINGERPRINT_CHUNK = 1 << 20


def content_fingerprint(files: list[Path]) -> str:
    """8 hex digits of a BLAKE2 hash of the files' bytes (and their names relative to their common parent)."""
    h = hashlib.blake2b(digest_size=4)
    root = Path(os.path.commonpath([str(f.parent) for f in files])) if files else Path("/")
    for f in files:
        h.update(str(f.relative_to(root)).encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(_FINGERPRINT_CHUNK):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def _absolute_part(source: str) -> tuple[str, list[Path]]:
    """(spec with an absolute location, its files) of one user path part; RllcError when it names no files."""
    from rllc.data.corpora import _JSONL_FIELD, resolve_files

    m = _JSONL_FIELD.match(source)
    if m:
        path = Path(m["path"]).resolve()
        if not path.is_file():
            raise RllcError(f"data file {m['path']} not found; check the path")
        return f"{path}:{m['field']}", [path]
    spec = os.path.abspath(source) if not Path(source).exists() else str(Path(source).resolve())
    return spec, [f.resolve() for f in resolve_files(spec if Path(spec).exists() else source)]


def _path_part(source: str) -> tuple[str, str]:
    """(key, spec) of one user path part: absolute location + content fingerprint."""
    spec, files = _absolute_part(source)
    return f"{spec}#{content_fingerprint(files)}", spec


def absolute_data_spec(spec: str) -> str:
    """`spec` with each local path part made absolute (and checked to name files; weights and other parts kept as
    written): a spec recorded in a run directory then means the same files from any working directory."""
    from rllc.data.corpora import is_user_source
    from rllc.data.dataset import _split_weight

    out = []
    for part in (p.strip() for p in spec.split(",")):
        source, _ = _split_weight(part, spec)
        if source.startswith("hf:") or source == "pretrain" or not is_user_source(source):
            out.append(part)
        else:
            out.append(_absolute_part(source)[0] + part[len(source):])
    return ",".join(out)


def _canonical_source(source: str) -> tuple[str, str]:
    from rllc.data.corpora import is_user_source

    if source == "pretrain" or source.startswith("hf:") or not is_user_source(source):
        return source, source
    return _path_part(source)


def data_key(run, spec: str) -> DataKey:  # noqa: ANN001 - Run
    """The store key and the resolvable spec of a data spec, however it was spelled (see the module docstring)."""
    from rllc.data.dataset import _split_weight

    spec = spec.strip()
    if is_model_spec(spec):
        from rllc.train import load_run

        ref = ModelRef.parse(spec)
        ref_run = load_run(ref.path)
        step = ref_run._check_step(ref.step) if ref.step is not None else (ref_run.steps or [None])[-1]
        if step is None:
            raise RllcError(f"reference run {ref.path} has no checkpoints yet")
        canon = f"{MODEL_PREFIX}{Path(ref.path).resolve()}@{step}"
        return DataKey(canon, canon)
    parts = [_split_weight(p.strip(), spec) for p in spec.split(",")]
    if len(parts) == 1:
        key, resolved = _canonical_source(parts[0][0])
        return DataKey(key, resolved)
    total = sum(w for _, w in parts)
    canon = [(*_canonical_source(s), w / total) for s, w in parts]
    return DataKey(",".join(f"{k}*{w:g}" for k, _, w in canon), ",".join(f"{r}*{w:g}" for _, r, w in canon))
