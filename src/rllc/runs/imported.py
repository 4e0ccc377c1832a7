"""Checkpoint series from elsewhere as rllc run directories: `import_series` writes one, `ImportedRun` reads it.

Sources (all local; nothing is downloaded):
    snapshots      a directory of `save_pretrained` snapshots named by step: checkpoint-1000/, step_1000/, step1000/
                   (GPT2LMHeadModel or GPTNeoXForCausalLM; config.json + model.safetensors)
    hf_cache       a Hugging Face cache of one model with revisions `stepN` (Pythia): the `models--ORG--NAME`
                   directory, or `hf:ORG/NAME` looked up in the local hub cache
    tl             a directory of TransformerLens state dicts (step_1000.safetensors, or .pt/.pth read with
                   torch.load(weights_only=True)) beside the HookedTransformerConfig as config.json
The run directory holds run.json (format "rllc-import/1": source, family, model config, one entry per step with
the weights' location and revision), tokenizer.json (the model's own tokenizer, copied), and the usual data/ cache
and results.sqlite of later commands. Weights are referenced where they are unless `copy=True`.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from rllc._errors import RllcError, check_writable, writing
from rllc.model.adapters import ModelShape
from rllc.train.checkpoints import atomic_write_json, read_json
from rllc.train.config import TrainConfig
from rllc.train.run import Run, RunConfig

IMPORT_FORMAT = "rllc-import/1"
_STEP = re.compile(r"(?:checkpoint|step)[-_]?(\d+)(?:\.(?:safetensors|pt|pth))?")
_FAMILIES = {"gpt2": "GPT2LMHeadModel", "gpt_neox": "GPTNeoXForCausalLM"}
# The config.json fields that define what a model computes; every checkpoint of a series must agree on them.
_ARCH_KEYS = {
    "gpt2": ("n_layer", "n_head", "n_embd", "n_inner", "n_positions", "vocab_size", "activation_function",
             "layer_norm_epsilon", "scale_attn_weights", "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
             "tie_word_embeddings"),
    "gpt_neox": ("num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size",
                 "max_position_embeddings", "vocab_size", "hidden_act", "layer_norm_eps", "use_parallel_residual",
                 "attention_bias", "rotary_pct", "rotary_emb_base", "rope_parameters", "rope_scaling",
                 "tie_word_embeddings"),
}


def _step_of(name: str) -> int | None:
    m = _STEP.fullmatch(name)
    return int(m[1]) if m else None


def _add(found: dict[int, dict[str, str]], step: int, entry: dict[str, str], src: Path) -> None:
    """Record one checkpoint; two at one step (checkpoint-100/ and step_100/) would silently keep either."""
    if step in found:
        raise RllcError(f"{src} has two checkpoints at step {step}: {found[step]['revision']} and "
                        f"{entry['revision']}; keep one")
    found[step] = entry


def _need_transformers():  # noqa: ANN202
    try:
        import transformers
    except ImportError:
        raise RllcError("importing Hugging Face checkpoints needs transformers: pip install 'rllc[hf]'") from None
    return transformers


def _hf_family(config_path: Path) -> tuple[str, dict]:
    cfg = read_json(config_path, "model config")
    family = cfg.get("model_type")
    if family not in _FAMILIES:
        raise RllcError(f"{config_path}: model_type {family!r} is not supported; rllc imports "
                        f"{', '.join(_FAMILIES)} (GPT2LMHeadModel, GPTNeoXForCausalLM)")
    return family, cfg


def _weights_in(d: Path) -> None:
    if not any(d.glob("*.safetensors")) and not any(d.glob("pytorch_model*.bin")):
        raise RllcError(f"snapshot {d} has no weights (model.safetensors); save it with save_pretrained")


def _find_tokenizer(candidates: list[Path], override: str | Path | None) -> Path:
    if override is not None:
        p = Path(override)
        p = p / "tokenizer.json" if p.is_dir() else p
        if not p.is_file():
            raise RllcError(f"tokenizer {p} does not exist")
        return p
    for d in candidates:
        if (d / "tokenizer.json").is_file():
            return d / "tokenizer.json"
    raise RllcError(f"no tokenizer.json beside the checkpoints (looked in {candidates[0]}); save the tokenizer "
                    "with tokenizer.save_pretrained(...) there, or pass --tokenizer PATH")


def _hf_cache_dir(src: str) -> Path:
    """`hf:ORG/NAME` -> the local cache directory models--ORG--NAME (never downloads)."""
    name = src[3:]
    from huggingface_hub import constants

    d = Path(constants.HF_HUB_CACHE) / ("models--" + name.replace("/", "--"))
    if not d.is_dir():
        raise RllcError(f"{name} is not in the local Hugging Face cache {constants.HF_HUB_CACHE}; fetch it with "
                        f"`hf download {name} --revision step0` on a machine with internet and copy {d.name}/ there")
    return d


def _scan(src: Path | str, steps: list[int] | None) -> dict[str, Any]:
    """Find the checkpoints of a source: kind, family, config, {step: {path, revision}}."""
    if isinstance(src, str) and src.startswith("hf:"):
        src = _hf_cache_dir(src)
    src = Path(src).resolve()
    if not src.is_dir():
        raise RllcError(f"import source {src} is not a directory")
    found: dict[int, dict[str, str]] = {}
    if (src / "refs").is_dir() and (src / "snapshots").is_dir():  # a Hugging Face cache of one model
        kind, repo = "hf_cache", src.name.removeprefix("models--").replace("--", "/")
        for ref in sorted((src / "refs").iterdir()):
            s = _step_of(ref.name)
            if s is None:
                continue
            snap = src / "snapshots" / ref.read_text().strip()
            _add(found, s, {"path": str(snap), "revision": ref.name}, src)
        if steps:
            missing = [s for s in steps if s not in found]
            if missing:
                raise RllcError(f"revision step{missing[0]} of {repo} is not in the local cache {src}; fetch it with "
                                f"`hf download {repo} --revision step{missing[0]}` on a machine with internet and "
                                f"copy {src.name}/ into the cache (HF_HUB_CACHE)")
        for s in list(found):
            if not Path(found[s]["path"]).is_dir():
                if steps and s in steps:
                    raise RllcError(f"revision {found[s]['revision']} of {repo} is listed in {src}/refs but its "
                                    f"snapshot {found[s]['path']} is missing; fetch it again with `hf download {repo} "
                                    f"--revision {found[s]['revision']}`")
                del found[s]
    elif (src / "config.json").is_file() and "model_type" not in read_json(src / "config.json", "config"):
        kind, repo = "tl", None  # TransformerLens state dicts beside a HookedTransformerConfig
        for f in sorted(src.iterdir()):
            s = _step_of(f.name)
            if s is not None and f.suffix in (".safetensors", ".pt", ".pth"):
                _add(found, s, {"path": str(f), "revision": f.name}, src)
    else:
        kind, repo = "snapshots", None
        for d in sorted(src.iterdir()):
            s = _step_of(d.name)
            if s is not None and d.is_dir():
                _add(found, s, {"path": str(d), "revision": d.name}, src)
    if not found:
        raise RllcError(f"no checkpoints found in {src}: expected snapshot directories named checkpoint-N/, "
                        "step_N/ or stepN/, a Hugging Face cache with refs stepN, or TransformerLens state dicts "
                        "step_N.safetensors beside config.json")
    if steps:
        missing = [s for s in steps if s not in found]
        if missing:
            raise RllcError(f"{src} has no checkpoint at step {missing[0]}; it has {sorted(found)[:8]}")
        found = {s: found[s] for s in steps}
    found = dict(sorted(found.items()))
    first = Path(next(iter(found.values()))["path"])
    if kind == "tl":
        config = read_json(src / "config.json", "TransformerLens config")
        family = "transformer_lens"
        tok_dirs = [src]
    else:
        for v in found.values():
            _weights_in(Path(v["path"]))
        family, config = _hf_family(first / "config.json")
        for v in found.values():
            f, c = _hf_family(Path(v["path"]) / "config.json")
            if f != family:
                raise RllcError(f"{v['path']} is a {f} model but {first} is {family}: one series, one architecture")
            differ = [k for k in _ARCH_KEYS[family] if k in c and k in config and c[k] != config[k]]
            if differ:
                k = differ[0]
                raise RllcError(f"{v['path']}/config.json has {k}={c[k]!r} but {first}/config.json has "
                                f"{k}={config[k]!r}: one series, one architecture")
        tok_dirs = [Path(v["path"]) for v in reversed(found.values())] + [src]
    return {"kind": kind, "repo": repo, "source": str(src), "family": family, "config": config,
            "checkpoints": {str(s): v for s, v in found.items()}, "tokenizer_dirs": tok_dirs}


def _build(family: str, config: dict, path: Path) -> nn.Module:
    """The model of one checkpoint, in eval mode."""
    if family == "transformer_lens":
        from rllc.model.adapters.tl import rllc_mismatch

        state = _load_state(path)
        try:
            from transformer_lens import HookedTransformer, HookedTransformerConfig
        except ImportError:
            HookedTransformer = None
        if HookedTransformer is None:
            return _tl_as_rllc(config, state, path)
        try:
            cfg = HookedTransformerConfig.from_dict(config) if hasattr(HookedTransformerConfig, "from_dict") \
                else HookedTransformerConfig(**config)
        except (TypeError, ValueError, AssertionError) as e:  # a missing, unknown or invalid field
            raise RllcError(f"{path.parent / 'config.json'} is not a HookedTransformerConfig ({e}); write "
                            "the model's model.cfg fields there as JSON") from None
        if rllc_mismatch(cfg) is None:
            return _tl_as_rllc(config, state, path)
        model = HookedTransformer(cfg)
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as e:  # a tensor of another shape
            raise RllcError(f"{path} does not match its config.json ({str(e).strip().splitlines()[-1].strip()})") from None
        bad = [k for k in missing if not k.endswith((".mask", ".IGNORE"))]
        if bad or unexpected:
            raise RllcError(f"{path} does not match its config.json ({'missing ' + bad[0] if bad else 'unexpected ' + unexpected[0]})")
        return model.eval()
    transformers = _need_transformers()
    cls = getattr(transformers, _FAMILIES[family])
    verbosity, bar = transformers.logging.get_verbosity(), transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()  # its load report and progress bar: rllc reports problems itself
    transformers.logging.disable_progress_bar()
    try:
        model, info = cls.from_pretrained(str(path), local_files_only=True, weights_only=True,
                                          output_loading_info=True, ignore_mismatched_sizes=True)
    except Exception as e:  # noqa: BLE001 - OSError, SafetensorError, RuntimeError, ... for a bad snapshot
        raise RllcError(f"cannot load the snapshot {path} ({str(e).strip().splitlines()[0]})") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bar:
            transformers.logging.enable_progress_bar()
    # transformers initialises a missing or mis-shaped tensor at random and goes on: that is not this checkpoint.
    # An unexpected tensor is refused when it is one of the model's parameters in another layer (the weights have
    # more layers than config.json); other extras, such as old GPT-2 attn.bias / masked_bias buffers, are ignored.
    kinds = {re.sub(r"\.\d+\.", ".#.", n) for n, _ in model.named_parameters()}
    missing, mismatched = sorted(info["missing_keys"]), sorted(info["mismatched_keys"])
    unexpected = sorted(k for k in info["unexpected_keys"] if re.sub(r"\.\d+\.", ".#.", k) in kinds)
    if missing or mismatched or unexpected:
        if missing:
            why = f"it has no tensor {missing[0]}"
        elif mismatched:
            name, got, want = mismatched[0]
            why = f"its tensor {name} has shape {tuple(got)}, not {tuple(want)}"
        else:
            why = f"it has a tensor {unexpected[0]} that its config.json does not name"
        raise RllcError(f"the snapshot {path} does not match its config.json: {why}")
    return model.eval()


def _tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a checkpoint's tensors (a weights file or a snapshot directory), read from the file
    headers only (safetensors; a .bin/.pt onto the meta device, weights_only): a truncated file fails here."""
    files = (sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))) if path.is_dir() else [path]
    out: dict[str, tuple[int, ...]] = {}
    for f in files:
        try:
            if f.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(f), "pt") as h:
                    out.update({k: tuple(h.get_slice(k).get_shape()) for k in h.keys()})
            else:
                state = torch.load(f, map_location="meta", weights_only=True)  # never unpickles code
                out.update({k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)})
        except Exception as e:  # noqa: BLE001 - SafetensorError, UnpicklingError, OSError, ... for a bad file
            raise RllcError(f"cannot read the weights {f} ({str(e).strip().splitlines()[0]}); it may be truncated: "
                            "save or fetch it again") from None
    return out


def _check_series(checkpoints: dict[str, dict[str, str]], names: set[str]) -> None:
    """Every checkpoint holds the tensors of the first (which was loaded and checked against its config) that the
    model has (`names`: tensors it ignores, such as old GPT-2 attention-mask buffers, may come and go), with the
    same shapes; a missing, mis-shaped or truncated tensor file is an error now, not at some later step."""
    paths = {s: Path(c["path"]) for s, c in checkpoints.items()}
    (s0, p0), *rest = paths.items()
    ref = {k: v for k, v in _tensor_shapes(p0).items() if k in names}
    for s, p in rest:
        got = _tensor_shapes(p)
        missing = sorted(set(ref) - set(got))
        shape = sorted(k for k in ref if k in got and got[k] != ref[k])
        if missing or shape:
            why = (f"it has no tensor {missing[0]}" if missing else
                   f"its tensor {shape[0]} has shape {got[shape[0]]}, not {ref[shape[0]]}")
            raise RllcError(f"checkpoint {p} (step {s}) does not hold the same tensors as step {s0}: {why}")


def _same_copy(files: list[Path], dst: Path) -> bool:
    """Whether `dst` holds a copy of `files` made by copy2 (same names, sizes and modification times)."""
    def stat(f: Path) -> tuple[int, int]:
        st = f.stat()  # follows the Hugging Face cache's symlinks to their blobs, as the copy did
        return st.st_size, st.st_mtime_ns  # copy2 keeps the nanoseconds; a coarser disk only costs a recopy

    names = {f.name for f in files}
    return names == {x.name for x in dst.iterdir()} and all(stat(f) == stat(dst / f.name) for f in files)


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from rllc.train.checkpoints import load_tensors

        return load_tensors(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a bad or unsafe file
        raise RllcError(f"cannot read {path} as a state dict ({str(e).splitlines()[0]})") from None
    if not isinstance(state, dict):
        raise RllcError(f"{path} does not hold a state dict")
    return state


def _tl_as_rllc(config: dict, state: dict, path: Path) -> nn.Module:
    """A TransformerLens state dict of rllc's architecture as an rllc Transformer (architecture checked first)."""
    from rllc.model.config import ModelConfig
    from rllc.model.transformer import Transformer
    from rllc.train.checkpoints import check_state_dict

    checks = {"attn_only": True, "normalization_type": "LN", "positional_embedding_type": "shortformer"}
    bad = [f"{k}={config.get(k)!r}" for k, v in checks.items() if config.get(k) != v]
    if bad:
        raise RllcError(f"{path}: a TransformerLens model with {', '.join(bad)} needs transformer-lens installed "
                        "(pip install 'rllc[tl]'); rllc's own transformer is attn_only, LN, shortformer")
    cfg = ModelConfig(n_layers=config["n_layers"], n_heads=config["n_heads"], d_model=config["d_model"],
                      d_head=config["d_head"], n_ctx=config["n_ctx"], d_vocab=config["d_vocab"],
                      ln_eps=config.get("eps", 1e-5))
    check_state_dict(state, cfg, path)
    model = Transformer(cfg, seed=None)
    model.load_state_dict({k: v for k, v in state.items() if not k.endswith((".mask", ".IGNORE"))})
    return model.eval()


@dataclass
class ImportedRun(Run):
    """A run directory written by `rllc import`: the same reader interface as a trained run (`steps`,
    `model_at(step)`, `tokenizer`, `dataset`, `sample_tokens`), with the model built by its own family."""

    record: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def steps(self) -> list[int]:
        return sorted(int(s) for s in self.record["checkpoints"])

    @property
    def provenance(self) -> dict[str, Any]:
        """Source, kind, family, revisions and tokenizer of the imported series."""
        r = self.record
        return {"source": r["source"], "kind": r["kind"], "family": r["family"], "repo": r.get("repo"),
                "copied": r.get("copied", False), "tokenizer": r.get("tokenizer_source"),
                "revisions": {s: c["revision"] for s, c in r["checkpoints"].items()}}

    def checkpoint_path(self, step: int) -> Path:
        return Path(self.record["checkpoints"][str(step)]["path"])

    def _check_step(self, step: int) -> int:
        steps = self.steps
        if step not in steps:
            near = min(steps, key=lambda s: abs(s - step))
            raise RllcError(f"imported run {self.path} has no checkpoint at step {step}; nearest is {near}")
        return step

    @property
    def tokenizer(self):  # noqa: ANN201 - tokenizers.Tokenizer
        if "_tok" not in self.__dict__:
            from rllc.data import load_tokenizer

            tok = load_tokenizer(self.path / "tokenizer.json")
            if tok.get_vocab_size() > self.record["shape"]["d_vocab"]:
                raise RllcError(f"tokenizer {self.path / 'tokenizer.json'} has {tok.get_vocab_size()} tokens, more "
                                f"than the model's vocabulary {self.record['shape']['d_vocab']}")
            self.__dict__["_tok"] = tok
        return self.__dict__["_tok"]

    def model_at(self, step: int, device: str | torch.device = "cpu") -> nn.Module:
        """The model at a checkpoint, in eval mode (a Hugging Face, TransformerLens or rllc model)."""
        self._check_step(step)
        path = self.checkpoint_path(step)
        if not path.exists():
            raise RllcError(f"the weights of step {step} are gone from {path}; re-import with `rllc import` "
                            "(--copy keeps a copy inside the run directory)")
        from rllc.model.adapters import to_device

        return to_device(_build(self.record["family"], self.record["config"], path), device)

    def metadata(self, step: int) -> dict[str, Any]:
        self._check_step(step)
        c = self.record["checkpoints"][str(step)]
        return {"step": step, "tokens_seen": None, "train_loss": None, "val_loss": None,
                "revision": c["revision"], "tokenizer_id": self.config.tokenizer_id}

    def metrics(self) -> pd.DataFrame:
        return pd.DataFrame(columns=["step", "train_loss"])


def load_imported(path: Path, d: dict[str, Any]) -> ImportedRun:
    """Read an imported run directory's run.json (already parsed as `d`)."""
    try:
        shape = ModelShape(**d["shape"])
        train = TrainConfig(data=d["data"], seed=int(d.get("seed", 0)), steps=max(1, max(int(s) for s in d["checkpoints"])))
        cfg = RunConfig(shape, train, d.get("tokenizer_id", ""))  # type: ignore[arg-type] - a model shape view
    except (KeyError, TypeError, ValueError) as e:
        raise RllcError(f"{path / 'run.json'} is not a valid imported run ({e})") from None
    return ImportedRun(path, cfg, record=d)


def import_series(src: str | Path, out: str | Path, *, data: str, steps: list[int] | None = None,
                  copy: bool = False, tokenizer: str | Path | None = None, n_ctx: int | None = None,
                  seed: int = 0) -> ImportedRun:
    """Write a run directory for an external checkpoint series (see the module docstring for the sources).

    Args:
        src: the series: a directory of snapshots, a `models--ORG--NAME` cache directory or `hf:ORG/NAME`, or a
            directory of TransformerLens state dicts with config.json.
        out: the run directory to write (an existing import of the same source, data, n_ctx and tokenizer is
            updated with the checkpoints found now; nothing else is overwritten).
        data: the data spec recorded as this run's "pretrain" data (a text path or glob, a JSONL field, `hf:` ...);
            it is tokenised with the model's own tokenizer when first used.
        steps: only these checkpoint steps (default all found).
        copy: copy the weights into `out/checkpoints/` instead of referencing them.
        tokenizer: a tokenizer.json (or its directory) if the snapshots have none.
        n_ctx: window length of the data sets (default the model's context length).
    Returns:
        The ImportedRun.
    """
    from rllc import __version__
    from rllc.data import load_tokenizer, tokenizer_id
    from rllc.data.dataset import parse_data_spec

    from rllc.pipeline.data import absolute_data_spec

    parse_data_spec(data)  # a bad spec fails before anything is written
    data = absolute_data_spec(data)  # recorded so that later commands read these files from any directory
    out = Path(out)
    found = _scan(src, steps)
    old = None
    if (out / "run.json").is_file():
        old = read_json(out / "run.json", "run config")
        if old.get("format") != IMPORT_FORMAT or old.get("source") != found["source"]:
            raise RllcError(f"{out} already holds another run; choose a new --out")
    elif out.is_dir() and any(p.name not in ("tokenizer.json", "checkpoints") for p in out.iterdir()):
        # not an interrupted import (its tokenizer, copied weights): a snapshot, the series itself, someone's files
        raise RllcError(f"{out} exists and is not an rllc run directory; choose an empty or new --out")
    tok_path = _find_tokenizer(found["tokenizer_dirs"], tokenizer)
    tok = load_tokenizer(tok_path)
    s = next(iter(found["checkpoints"]))
    model = _build(found["family"], found["config"], Path(found["checkpoints"][s]["path"]))
    from rllc.model.adapters import adapt

    shape = adapt(model).cfg
    _check_series(found["checkpoints"], set(model.state_dict()))
    if tok.get_vocab_size() > shape.d_vocab:
        raise RllcError(f"tokenizer {tok_path} has {tok.get_vocab_size()} tokens but the model's vocabulary is "
                        f"{shape.d_vocab}: they are not a pair")
    window = shape.n_ctx if n_ctx is None else int(n_ctx)
    if not 2 <= window <= shape.n_ctx:
        raise RllcError(f"--n-ctx {window} must be between 2 and the model's context length {shape.n_ctx}")
    if old is not None:  # an update (new checkpoints): the stored results mean what they meant
        now = {"--data": data, "--n-ctx": window, "tokenizer": tokenizer_id(tok), "seed": seed}
        was = {"--data": old.get("data"), "--n-ctx": old.get("shape", {}).get("n_ctx"),
               "tokenizer": old.get("tokenizer_id"), "seed": old.get("seed", 0)}
        k = next((k for k in now if now[k] != was[k]), None)
        if k is not None:
            raise RllcError(f"{out} was imported with {k} {was[k]}, not {now[k]}: its stored results are on that; "
                            f"import again with the same {k}, or choose a new --out")
    check_writable(out, "cannot write the run directory; pass --out a writable folder")
    with writing(out, what="run directory"):
        out.mkdir(parents=True, exist_ok=True)
        if not (out / "tokenizer.json").exists() or not (out / "tokenizer.json").samefile(tok_path):
            shutil.copyfile(tok_path, out / "tokenizer.json")
    if copy:
        for st, c in found["checkpoints"].items():
            dst = out / "checkpoints" / f"step_{int(st):07d}"
            p = Path(c["path"])
            files = [p] if p.is_file() else [x for x in p.iterdir() if x.is_file()]
            if dst.exists() and not _same_copy(files, dst):  # left by an interrupted import of other weights
                shutil.rmtree(dst)
            if not dst.exists():
                tmp = dst.with_name(dst.name + ".tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                with writing(tmp, what="copied weights"):
                    tmp.mkdir(parents=True)
                    for f in files:
                        shutil.copy2(f.resolve(), tmp / f.name)
                    tmp.rename(dst)
            c["path"] = str((dst / p.name) if p.is_file() else dst)
    record = {"format": IMPORT_FORMAT, "source": found["source"], "kind": found["kind"], "repo": found["repo"],
              "family": found["family"], "config": found["config"], "checkpoints": found["checkpoints"],
              "shape": {**shape.to_dict(), "n_ctx": window}, "copied": copy, "data": data, "seed": seed,
              "tokenizer_source": str(tok_path.resolve()), "tokenizer_id": tokenizer_id(tok),
              "rllc_version": __version__}
    atomic_write_json(out / "run.json", record)
    return load_imported(out, record)
