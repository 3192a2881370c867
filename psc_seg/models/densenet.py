"""3D DenseNet for MRI tissue segmentation: the layout of Bui, Shin and Moon (2017), the
default, and, by options, the paper's reproduction of it.

::

    x ─ stem: 3 x [conv d^3 -> BN-ReLU] (stem_channels) ────────────────────────────┐ full res
            └─ conv 2^3 stride 2 ─ block 1 ─ trans ─ block 2 ─ trans ─ block 3 ─ trans ─ block 4
                                     │ 1/2            │ 1/4           │ 1/8           │ 1/16
                                     head x2          head x4         head x8         head x16
                                     └──────────────┬─┴───────────────┴───────────────┘
                                   concat(stem, 4 heads) ─ BN-ReLU ─ 1^3 conv ─ logits (num_classes)

- dense layer: BN-ReLU-1^3 conv (bottleneck_factor x growth) -> BN-ReLU-d^3 conv (growth)
  -> dropout; its output is concatenated to its input;
- transition: BN-ReLU-1^3 conv (channels x compression) -> 2^3 conv with stride 2;
- head: BN-ReLU-1^3 conv to num_classes, then a transposed conv (grouped per class) that
  upsamples to full resolution.

The paper's variant (the registry's ``densenet (paper)``, presets ``mri/densenet-paper-*``):
five dense blocks of four layers (``block_layers=[4, 4, 4, 4, 4]``, down to 1/32), each layer
BN-ReLU-d^3 conv without bottleneck (``bottleneck_factor=0``), transitions without compression
(``compression=1``), heads upsampling by trilinear interpolation (``upsample="trilinear"``).

With a PmSCn spec the d^3 convs are replaced (DESIGN.md section 2): the stem's three convs are
one group; in a dense block, with n = 1 each layer's conv becomes a PSC(m,1), and with n >= 2
each run of n consecutive layers becomes one layer whose PSC(m,n) produces their n x growth
channels at once (a remainder of r < n layers: one PSC(m,r); :func:`~psc_seg.nn.dense_groups`),
after one bottleneck of the single layer's width. Later layers see the same channels as with
single layers. Padding is "same": the output has the input's shape, which must divide by
``2 ** len(block_layers)`` (``shape_step``). The output is logits.

Receptive field: the coarsest head reaches far. With the default layout an output voxel
depends on input voxels up to ``receptive_radius`` = 146 away along each axis (145 with
psc(2,2), whose stem is one PSC(2,2) for three convs; 298 for the paper's variant;
:func:`receptive_field`), far beyond the ``context`` halo of one coarsest voxel (16). Blockwise
predict uses both (:func:`psc_seg.engine.inference.plan_geometry`): the output is the
network applied once to the whole volume padded by ``context``, and each block reads its
write region grown by ``receptive_radius``, clipped to that padded volume (where the volume
fits one block, or on request; otherwise the ``context`` halo alone, not exact near block
borders).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import torch
from torch import nn

from psc_seg.models.shapes import check_divisible, round_up
from psc_seg.nn import PSC, ConvSpec, dense_groups, make_convs, parse_conv_spec, receptive_span


def _bn_relu(channels: int) -> list[nn.Module]:
    return [nn.BatchNorm3d(channels), nn.ReLU(inplace=True)]


UPSAMPLE_MODES = ("transposed", "nearest", "trilinear")


class DenseLayer(nn.Module):
    """One dense layer, or the block standing for a group of ``conv.n`` of them (DESIGN.md
    section 2): [BN-ReLU-1^3 conv (``bottleneck`` channels, none if 0)] -> BN-ReLU-d^3 conv
    (``conv``: a Conv3d or one PSC) to ``growth`` channels -> dropout; its output is
    concatenated to its input."""

    def __init__(self, in_channels: int, growth: int, *, bottleneck: int, dropout: float, conv: ConvSpec,
                 kernel_size: int) -> None:
        super().__init__()
        squeeze = [*_bn_relu(in_channels), nn.Conv3d(in_channels, bottleneck, 1, bias=False)] if bottleneck else []
        width = bottleneck or in_channels
        (spatial,) = make_convs(conv, width, growth, num_convs=1, kernel_size=kernel_size, padding="same")
        self.body = nn.Sequential(
            *squeeze, *_bn_relu(width), spatial,
            nn.Dropout3d(dropout) if dropout > 0 else nn.Identity(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], dim=1)


def _transition(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        *_bn_relu(in_channels), nn.Conv3d(in_channels, out_channels, 1, bias=False),
        nn.Conv3d(out_channels, out_channels, 2, stride=2, bias=False),
    )


def _head(channels: int, num_classes: int, factor: int, upsample: str) -> nn.Sequential:
    """BN-ReLU-1^3 conv to ``num_classes``, then upsampling by ``factor`` to full resolution:
    a transposed conv grouped per class, or nearest / trilinear interpolation (which commutes
    with the 1^3 conv: the same function as upsampling first, on fewer channels)."""
    if upsample == "transposed":
        up: nn.Module = nn.ConvTranspose3d(num_classes, num_classes, 2 * factor, stride=factor, padding=factor // 2,
                                           groups=num_classes, bias=False)
    else:
        corners = {} if upsample == "nearest" else {"align_corners": False}
        up = nn.Upsample(scale_factor=factor, mode=upsample, **corners)
    return nn.Sequential(*_bn_relu(channels), nn.Conv3d(channels, num_classes, 1, bias=False), up)


def _upsampled(scale: int, lo: int, hi: int, factor: int, reach: Sequence[tuple[int, int]]) -> tuple[int, int, int]:
    """The receptive field after upsampling by ``factor``, where output phase ``ph`` (position
    ``i * factor + ph``) reads inputs ``i + reach[ph][0] ... i + reach[ph][1]``: the hull over phases."""
    if scale % factor:
        raise ValueError(f"receptive_field: upsampling by {factor} past the input's resolution")
    fine = scale // factor
    lo = lo + min(first * scale - ph * fine for ph, (first, _) in enumerate(reach))
    hi = hi + max(last * scale - ph * fine for ph, (_, last) in enumerate(reach))
    return fine, lo, hi


def receptive_field(modules, *, scale: int = 1, lo: int = 0, hi: int = 0) -> tuple[int, int, int]:
    """Receptive field of ``modules`` applied in order, along one axis (kernels are cubic).

    A feature at position ``q`` of a map of stride ``scale`` (in input voxels) depends on input
    voxels ``[q * scale + lo, q * scale + hi]`` (zero-padding positions included); returns
    ``(scale, lo, hi)`` after ``modules`` (for an upsampling the hull over the output phases).
    Conv3d (any stride and padding), ConvTranspose3d, nearest and trilinear Upsample, same-padded
    PSC and :class:`DenseLayer` are followed; other modules (norms, activations, dropout) are
    pointwise."""
    for module in modules:
        if isinstance(module, DenseLayer):  # its output is [input, body(input)]: the body's reach
            scale, lo, hi = receptive_field(module.body, scale=scale, lo=lo, hi=hi)
        elif isinstance(module, nn.Sequential):
            scale, lo, hi = receptive_field(module, scale=scale, lo=lo, hi=hi)
        elif isinstance(module, PSC):
            if module.padding != "same" or module.stride != (1, 1, 1):
                raise ValueError(f"receptive_field: only same-padded stride-1 PSC, got {module}")
            radius = receptive_span(module)[0] // 2  # kernels are cubic (DenseNet checks)
            lo, hi = lo - radius * scale, hi + radius * scale
        elif isinstance(module, nn.ConvTranspose3d):
            (k, t, p) = (module.kernel_size[0], module.stride[0], module.padding[0])
            # output o reads inputs i with 0 <= o + p - i t < k; o = phase + j t reads i - j
            reach = [(-(-(ph + p - k + 1) // t), (ph + p) // t) for ph in range(t)]
            scale, lo, hi = _upsampled(scale, lo, hi, t, reach)
        elif isinstance(module, nn.Upsample):
            t = int(module.scale_factor)
            if module.mode == "nearest":  # o reads floor(o / t)
                reach = [(0, 0)] * t
            elif module.mode == "trilinear" and not module.align_corners:
                # o = i t + ph reads around i + (2 ph + 1 - t) / (2 t): i - 1 and i, i alone, or i and i + 1
                reach = [(min(0, (2 * ph + 1 - t) // t), max(0, -(-(2 * ph + 1 - t) // t))) for ph in range(t)]
            else:
                raise ValueError(f"receptive_field: not followed: {module}")
            scale, lo, hi = _upsampled(scale, lo, hi, t, reach)
        elif isinstance(module, nn.Conv3d):
            k = (module.kernel_size[0] - 1) * module.dilation[0] + 1
            p, t = module.padding[0], module.stride[0]
            lo, hi, scale = lo - p * scale, hi + (k - 1 - p) * scale, scale * t
    return scale, lo, hi


class DenseNet(nn.Module):
    """3D DenseNet with multi-scale upsampled heads; see the module docstring.

    Args:
        in_channels: input modalities (1 for T1).
        num_classes: output classes, background included (4: background, CSF, GM, WM).
        conv: conv spec for the d^3 convs (``"conv3d"``, ``"psc(m,n)"``, ``"r2plus1d"``).
        stem_channels: feature maps of the three stem convs.
        growth_rate: channels each dense layer adds.
        block_layers: dense layers per block (one block per resolution 1/2, 1/4, ...).
        bottleneck_factor: width of the 1^3 bottleneck of each dense layer, in units of
            ``growth_rate``; 0: no bottleneck (the layer is BN-ReLU-d^3 conv).
        compression: channel ratio kept by a transition.
        dropout: dropout rate after each dense layer.
        kernel_size: d.
        upsample: the heads' upsampling: ``"transposed"`` (a transposed conv grouped per
            class), ``"nearest"`` or ``"trilinear"``.

    Shapes: ``(N, in_channels, Z, Y, X)`` -> logits ``(N, num_classes, Z, Y, X)``; Z, Y, X
    divisible by ``2 ** len(block_layers)``.
    """

    padding = "same"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        conv: str = "conv3d",
        stem_channels: int = 32,
        growth_rate: int = 16,
        block_layers: Sequence[int] = (4, 4, 4, 4),
        bottleneck_factor: int = 4,
        compression: float = 0.5,
        dropout: float = 0.2,
        kernel_size: int = 3,
        upsample: str = "transposed",
    ) -> None:
        super().__init__()
        if not 0 < compression <= 1:
            raise ValueError(f"densenet: compression must be in (0, 1], got {compression}")
        if not isinstance(kernel_size, int) or isinstance(kernel_size, bool):
            raise ValueError(f"densenet: kernel_size must be one odd int (cubic kernels), got {kernel_size!r}; "
                             "per-axis kernel sizes are for the unet")
        if not isinstance(bottleneck_factor, int) or isinstance(bottleneck_factor, bool) or bottleneck_factor < 0:
            raise ValueError(f"densenet: bottleneck_factor must be an int >= 0 (0: no bottleneck), "
                             f"got {bottleneck_factor!r}")
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"densenet: upsample must be one of {', '.join(UPSAMPLE_MODES)}, got {upsample!r}")
        self.in_channels, self.out_channels, self.num_classes = in_channels, num_classes, num_classes
        self.conv = str(parse_conv_spec(conv))
        self.num_blocks = len(block_layers)
        stem_convs = make_convs(conv, in_channels, stem_channels, num_convs=3, kernel_size=kernel_size,
                                padding="same")
        self.stem = nn.Sequential(
            *[m for c in stem_convs for m in (c, *_bn_relu(stem_channels))]
        )
        self.stem_down = nn.Conv3d(stem_channels, stem_channels, 2, stride=2, bias=False)
        self.blocks = nn.ModuleList()
        self.transitions = nn.ModuleList()
        self.heads = nn.ModuleList()
        channels = stem_channels
        for index, num_layers in enumerate(block_layers):
            layers = []
            for group in dense_groups(conv, num_layers):  # group.n layers: one conv, their channels at once
                growth = group.n * growth_rate
                layers.append(DenseLayer(channels, growth, bottleneck=bottleneck_factor * growth_rate,
                                         dropout=dropout, conv=group, kernel_size=kernel_size))
                channels += growth
            self.blocks.append(nn.Sequential(*layers))
            self.heads.append(_head(channels, num_classes, 2 ** (index + 1), upsample))
            if index < len(block_layers) - 1:
                reduced = max(1, int(channels * compression))
                self.transitions.append(_transition(channels, reduced))
                channels = reduced
        merged = stem_channels + num_classes * len(block_layers)
        self.classifier = nn.Sequential(*_bn_relu(merged), nn.Conv3d(merged, num_classes, 1))

    # Same shape API as the UNet, for the engine and the trainer.
    @property
    def shape_step(self) -> tuple[int, int, int]:
        step = 2**self.num_blocks
        return (step, step, step)

    @property
    def context(self) -> tuple[int, int, int]:
        """The padding of the volume that blockwise predict's output is defined on: one
        coarsest-level voxel on each side (see the module docstring). The receptive field is
        larger: :attr:`receptive_radius`."""
        return self.shape_step

    @cached_property  # walks the layers; asked for several times per predict
    def receptive_radius(self) -> tuple[int, int, int]:
        """An output voxel depends on input voxels at most this far away along each axis,
        whatever its phase (146 for the default layout, 298 for the paper's); zero-padding
        positions count."""
        radius = 0
        for index in range(self.num_blocks):  # the path through head `index`
            path = [self.stem, self.stem_down]
            for level in range(index):
                path += [self.blocks[level], self.transitions[level]]
            path += [self.blocks[index], self.heads[index]]
            _, lo, hi = receptive_field(path)
            radius = max(radius, -lo, hi)
        _, lo, hi = receptive_field([self.stem])
        return (max(radius, -lo, hi),) * 3  # type: ignore[return-value]

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, int, int]:
        return check_divisible("densenet", input_shape, self.shape_step)

    def valid_output_shape(self, min_output_shape: Sequence[int]) -> tuple[int, int, int]:
        return round_up(min_output_shape, self.shape_step)

    def valid_input_shape(self, output_shape: Sequence[int]) -> tuple[int, int, int]:
        return self.output_shape(output_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, Z, Y, X)`` -> logits ``(N, num_classes, Z, Y, X)``."""
        stem = self.stem(x)
        h = self.stem_down(stem)
        upsampled = []
        for index, block in enumerate(self.blocks):
            h = block(h)
            upsampled.append(self.heads[index](h))
            if index < len(self.transitions):
                h = self.transitions[index](h)
        return self.classifier(torch.cat([stem, *upsampled], dim=1))
