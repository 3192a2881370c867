"""Model-zoo stage functions behind ``psc-seg models``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from psc_seg.errors import UserError
from psc_seg.models import build_model, count_parameters, list_models, model_entry, save_checkpoint


def model_table(specs: Sequence[str]) -> list[dict[str, Any]]:
    """For each registered model, then each of its named variants: name, variant (None for
    the defaults), description, and parameter count per conv spec at the registry's default
    size (models are built on the meta device: no memory is allocated)."""
    rows = []
    for name in list_models():
        entry = model_entry(name)
        for variant, (description, kwargs) in [(None, (entry.description, {})), *entry.variants.items()]:
            counts = {}
            for spec in specs:
                with torch.device("meta"):
                    counts[spec] = count_parameters(build_model(name, **{**kwargs, "conv": spec}))
            rows.append({"name": name, "variant": variant, "description": description, "parameters": counts})
    return rows


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["key=value", ...]`` -> dict, each value parsed as YAML (``"[[2,2,2]]"`` -> list)."""
    result: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected key=value, e.g. --set num_fmaps=12")
        try:
            result[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise UserError(f"--set {item!r}: the value is not valid YAML ({exc.problem})") from None
    return result


def init_checkpoint(name: str, out: Path, *, conv: str, overrides: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """Build model ``name`` with ``conv`` and ``overrides``, write it untrained to ``out``."""
    torch.manual_seed(seed)
    try:
        model = build_model(name, **{"conv": conv, **overrides})
    except (ValueError, TypeError) as exc:
        raise UserError(str(exc)) from None
    save_checkpoint(out, model, metadata={"trained": False, "seed": seed})
    return {"name": name, "conv": model.build_config["kwargs"]["conv"], "parameters": count_parameters(model)}
