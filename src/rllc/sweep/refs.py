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
"""

from __future__ import annotations

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
