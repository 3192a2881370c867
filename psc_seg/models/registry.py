"""Model registry: build a model by name from keyword arguments, list what is registered.

Each model is built by ``build_model(name, **kwargs)``; the registry's defaults (the paper's
sizes) fill what is not given, and the resolved arguments are kept on the model as
``model.build_config = {"name": ..., "kwargs": {...}}`` so a checkpoint can rebuild it.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    """``variants``: named sets of arguments over ``defaults`` that stand for another published
    layout of the same model (the paper's DenseNet), shown by ``psc-seg models list``; each is
    ``(description, kwargs)``."""

    builder: Callable[..., nn.Module]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    variants: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, builder: Callable[..., nn.Module], *, defaults: dict[str, Any], description: str,
                   variants: dict[str, tuple[str, dict[str, Any]]] | None = None) -> None:
    """Register ``builder`` under ``name`` with its default keyword arguments (and named variants)."""
    _REGISTRY[name] = ModelEntry(builder, dict(defaults), description, dict(variants or {}))


def list_models() -> list[str]:
    """Names of the registered models."""
    return sorted(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; ValueError listing the registered names if unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}") from None


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``; ``kwargs`` override its defaults.

    An unknown keyword is a ValueError naming it and the accepted ones.
    """
    entry = model_entry(name)
    resolved = copy.deepcopy(entry.defaults)
    resolved.update(kwargs)
    accepted = [p for p in inspect.signature(entry.builder).parameters if p != "self"]
    unknown = [k for k in resolved if k not in accepted]
    if unknown:
        raise ValueError(f"model {name!r}: unknown argument(s) {', '.join(unknown)}; accepted: {', '.join(accepted)}")
    model = entry.builder(**resolved)
    model.build_config = {"name": name, "kwargs": resolved}
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
