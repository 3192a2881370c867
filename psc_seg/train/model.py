"""Build the network a training config describes and check its patch shape."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Sequence

from torch import nn

from psc_seg.errors import UserError
from psc_seg.models import build_model, list_models, model_entry
from psc_seg.train.config import TrainConfig


def build_training_model(config: TrainConfig, *, in_channels: int = 1) -> nn.Module:
    """The model of ``config.model`` with ``in_channels`` inputs and one output per affinity
    offset or per class, initialised as ``train.init`` says. UNets for semantic tasks output
    logits unless told otherwise.

    Raises:
        UserError: unknown model name or builder argument (with a close match), bad values.
    """
    name = config.model.name
    if name not in list_models():
        close = difflib.get_close_matches(name, list_models(), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(f"config key 'model.name': unknown model {name!r}; {hint}registered: {', '.join(list_models())}")
    accepted = [p for p in inspect.signature(model_entry(name).builder).parameters if p != "self"]
    kwargs = config.model.builder_kwargs()
    for key in kwargs:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f"did you mean 'model.{close[0]}'? " if close else ""
            raise UserError(
                f"config key 'model.{key}' is not an argument of model {name!r}; {hint}"
                f"allowed keys here: name, {', '.join(a for a in accepted if a not in _CHANNEL_ARGS)}"
            )
    kwargs["in_channels"] = in_channels
    channel_arg = "out_channels" if "out_channels" in accepted else "num_classes"
    kwargs[channel_arg] = config.task.out_channels
    if config.task.kind == "semantic" and "final_activation" in accepted:
        kwargs.setdefault("final_activation", None)
    if config.task.kind == "affinities" and "final_activation" in accepted:
        kwargs.setdefault("final_activation", "sigmoid")
    try:
        model = build_model(name, **kwargs)
    except (ValueError, TypeError) as exc:
        raise UserError(f"config section 'model': {str(exc).splitlines()[0]}") from None
    return initialize(model, config.train.init)


_CHANNEL_ARGS = ("in_channels", "out_channels", "num_classes")


def initialize(model: nn.Module, scheme: str = "kaiming") -> nn.Module:
    """Re-initialise the weights of ``model`` in place (uses torch's global RNG).

    ``"kaiming"``: He normal initialisation (fan in, gain of a leaky ReLU) for every 3D conv and
    transposed conv, zero biases, so activations keep their scale through the extra 2D / 1D
    convs of PmSCn blocks; ``"default"``: leave PyTorch's initialisation.
    """
    if scheme == "default":
        return model
    if scheme != "kaiming":
        raise ValueError(f"unknown init scheme {scheme!r}; use kaiming or default")
    for module in model.modules():
        if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(module.weight, a=0.01, mode="fan_in", nonlinearity="leaky_relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def check_patch_shape(model: nn.Module, patch_shape: Sequence[int]) -> tuple[int, int, int]:
    """The input shape ``(z, y, x)`` that gives exactly the output ``patch_shape``.

    Raises:
        UserError: ``patch_shape`` is not a valid output size of ``model``; the message
            proposes the nearest valid one.
    """
    patch_shape = tuple(int(s) for s in patch_shape)
    try:
        return tuple(model.valid_input_shape(patch_shape))  # type: ignore[return-value]
    except ValueError:
        step = model.shape_step
        above = model.valid_output_shape(patch_shape)
        below = model.valid_output_shape([max(1, s - st + 1) for s, st in zip(patch_shape, step)])
        nearest = [lo if want - lo < hi - want else hi for want, lo, hi in zip(patch_shape, below, above)]
        text = "[" + ",".join(map(str, nearest)) + "]"
        raise UserError(
            f"train.patch_shape {list(patch_shape)} is not a valid output size of this model "
            f"(sizes step by {list(step)}); the nearest valid one is {nearest}: --set train.patch_shape={text}"
        ) from None
