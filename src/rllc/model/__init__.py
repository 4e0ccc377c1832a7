"""The attention-only transformer, its hook points, components (one parser) and adapters for other models."""

from rllc.model.components import Component, component_masks, heads, parse_component, resolve_masks
from rllc.model.config import ModelConfig
from rllc.model.hooks import HookPoint
from rllc.model.transformer import Transformer

__all__ = ["Component", "HookPoint", "ModelConfig", "Transformer", "component_masks", "heads", "parse_component",
           "resolve_masks"]
