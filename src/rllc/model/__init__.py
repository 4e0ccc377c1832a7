"""The attention-only transformer, its hook points and its component registry."""

from rllc.model.components import Component, heads, resolve_masks
from rllc.model.config import ModelConfig
from rllc.model.hooks import HookPoint
from rllc.model.transformer import Transformer

__all__ = ["Component", "HookPoint", "ModelConfig", "Transformer", "heads", "resolve_masks"]
