"""3D UNet for EM affinities (MALA / funlib layout), with conv3d or PmSCn convolutions.

::

    in ─ convs(c0) ────────────────────────────────────── crop+cat ─ convs(c0) ─ 1x1 ─ act ─ out
               │                                             ▲
             pool f0                                      up f0 -> c0
               ▼                                             │
             convs(c1) ──────────────────── crop+cat ─ convs(c1)
                   │                           ▲
                 pool f1                    up f1 -> c1
                   ▼                           │
                 convs(c2)  (bottom) ──────────┘

with ``c_l = num_fmaps * fmap_inc_factor**l``. Each "convs" box is a group of two d^3 convs,
replaced by PmSCn according to the conv spec (:func:`psc_seg.nn.make_convs`). The kernel may
differ per axis and per level (``kernel_size``): ``(1, 3, 3)`` on the first levels, where EM
sections are thick, then ``3`` lower down, as in CREMI networks; the decoder's box of a level
uses that level's kernel.

Shape arithmetic per axis, valid padding (each box shrinks by ``s``: 2(k-1) for conv3d and
psc(m,1), n(k-1) for psc(m,n>=2), with k the level's kernel size along the axis)::

    down:   x -> x - s, must divide by f_l,  -> (x - s) / f_l
    bottom: x -> x - s
    up:     x -> x * f_l - s   (the skip is center-cropped to x * f_l)

So the output is smaller than the input by ``2 * context``, a constant, and valid sizes form a
lattice with step ``prod(f_l)``. With ``padding="same"`` output = input, which must divide by
``prod(f_l)``. Tiles whose inputs start on the same lattice stitch exactly (valid mode).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from psc_seg.models.registry import build_model
from psc_seg.models.shapes import check_divisible, round_up
from psc_seg.nn import (
    cat_channels,
    conv3d,
    fast_enabled,
    kernel_triple,
    make_activation,
    make_convs,
    make_norm,
    max_pool3d,
    parse_conv_spec,
    receptive_span,
    run_sequential,
    valid_shrink,
)


class ConvBlock(nn.Sequential):
    """A group of consecutive convs, each followed by the host's norm and activation."""

    def __init__(self, convs: Sequence[nn.Module], channels: int, *, norm: str | None, activation: str | None):
        layers: list[nn.Module] = []
        for conv in convs:
            layers.append(conv)
            for extra in (make_norm(norm, channels), make_activation(activation)):
                if extra is not None:
                    layers.append(extra)
        super().__init__(*layers)
        # per axis (z, y, x): as padded, and as if unpadded
        self.shrink = tuple(sum(axis) for axis in zip(*(valid_shrink(c) for c in convs)))
        self.span = tuple(sum(axis) for axis in zip(*(receptive_span(c) for c in convs)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_sequential(self, x)  # Conv3d members through psc_seg.nn.fast


def level_kernels(kernel_size, levels: int) -> tuple[tuple[int, int, int], ...]:
    """One ``(kz, ky, kx)`` per UNet level from a ``kernel_size`` argument (see :class:`UNet`):
    an int d or three ints for every level, or a list of ``levels`` entries, each d or three
    ints (a list with a list in it is per level). ValueError saying what is accepted."""
    accepted = (f"an odd int, three odd ints (z, y, x), or one of those per level ({levels} levels: "
                "len(downsample_factors) + 1), e.g. [[1, 3, 3], [1, 3, 3], 3]")
    per_level = isinstance(kernel_size, Sequence) and any(isinstance(k, Sequence) for k in kernel_size)
    try:
        if not per_level:
            return (kernel_triple(kernel_size),) * levels
        if len(kernel_size) != levels:
            raise ValueError
        return tuple(kernel_triple(k) for k in kernel_size)
    except ValueError:
        raise ValueError(f"unet: kernel_size must be {accepted}; got {kernel_size!r}") from None


def _center_crop(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    offsets = [(have - want) // 2 for have, want in zip(x.shape[2:], shape)]
    slices = tuple(slice(o, o + s) for o, s in zip(offsets, shape))
    return x[(Ellipsis, *slices)]


class UNet(nn.Module):
    """3D UNet; see the module docstring for the layout and shape arithmetic.

    Args:
        in_channels: input channels (1 for EM).
        out_channels: output channels (3 affinities for EM, one per offset).
        num_fmaps: feature maps at the top level.
        fmap_inc_factor: multiplier of feature maps per level.
        downsample_factors: one (z, y, x) factor (or an int) per downsampling.
        kernel_size: the convolutions' kernel: d (d^3), ``(kz, ky, kx)`` for every level, or
            one entry (d or ``(kz, ky, kx)``) per level, top first (``len(downsample_factors) +
            1`` entries: the levels' down and up boxes, the last the bottom), e.g.
            ``[[1, 3, 3], [1, 3, 3], 3]``. Each size odd; a size of 1 leaves its axis alone.
        padding: ``"valid"`` (shrinks, exact tiling) or ``"same"``.
        upsample: ``"transposed"`` (ConvTranspose3d to the skip's channels) or ``"nearest"``
            (nearest-neighbour upsampling, then a 1x1x1 conv to the skip's channels, as the
            authors of the PmSCn paper).
        conv: conv spec, ``"conv3d"``, ``"psc(m,n)"`` or ``"r2plus1d"``.
        activation: activation after each conv group member (``"leaky_relu"`` for the paper).
        norm: optional norm after each conv (``"batch"``, ``"instance"``, ``"group"``).
        final_activation: applied to the output (``"sigmoid"`` for affinities, None for logits).
        num_convs: d^3 convs per level (2 in MALA).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        num_fmaps: int,
        fmap_inc_factor: int,
        downsample_factors: Sequence[int | Sequence[int]],
        kernel_size: int | Sequence[int] | Sequence[int | Sequence[int]] = 3,
        padding: str = "valid",
        upsample: str = "transposed",
        conv: str = "conv3d",
        activation: str | None = "relu",
        norm: str | None = None,
        final_activation: str | None = "sigmoid",
        num_convs: int = 2,
    ) -> None:
        super().__init__()
        if padding not in ("valid", "same"):
            raise ValueError(f"unet: padding must be 'valid' or 'same', got {padding!r}")
        if upsample not in ("transposed", "nearest"):
            raise ValueError(f"unet: upsample must be 'transposed' or 'nearest', got {upsample!r}")
        factors = []
        for f in downsample_factors:
            f = (f, f, f) if isinstance(f, int) else tuple(int(v) for v in f)
            if len(f) != 3 or min(f) < 1:
                raise ValueError(f"unet: each downsample factor must be 3 positive ints (z, y, x), got {f}")
            factors.append(f)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.padding, self.conv = padding, str(parse_conv_spec(conv))
        self.downsample_factors = tuple(factors)
        self.kernel_sizes = level_kernels(kernel_size, len(factors) + 1)
        channels = [num_fmaps * fmap_inc_factor**level for level in range(len(factors) + 1)]

        def block(c_in: int, c_out: int, level: int) -> ConvBlock:
            convs = make_convs(conv, c_in, c_out, num_convs=num_convs, kernel_size=self.kernel_sizes[level],
                               padding=padding, activation=activation)
            return ConvBlock(convs, c_out, norm=norm, activation=activation)

        self.down = nn.ModuleList()
        c_prev = in_channels
        for level in range(len(factors)):
            self.down.append(block(c_prev, channels[level], level))
            c_prev = channels[level]
        self.pool = nn.ModuleList(nn.MaxPool3d(f, stride=f) for f in factors)
        self.bottom = block(channels[-2] if factors else in_channels, channels[-1], len(factors))
        self.upsample_layers = nn.ModuleList()
        self.up = nn.ModuleList()
        for level in range(len(factors)):
            c_low, c_skip, f = channels[level + 1], channels[level], factors[level]
            if upsample == "transposed":
                self.upsample_layers.append(nn.ConvTranspose3d(c_low, c_skip, f, stride=f))
            else:
                self.upsample_layers.append(
                    nn.Sequential(nn.Upsample(scale_factor=f, mode="nearest"), nn.Conv3d(c_low, c_skip, 1))
                )
            self.up.append(block(2 * c_skip, c_skip, level))
        self.head = nn.Conv3d(channels[0], out_channels, 1)
        self.final = make_activation(final_activation) or nn.Identity()
        # per level: shrink of the down box, of the up box; and the bottom box
        self._down_shrink = [b.shrink for b in self.down]
        self._up_shrink = [b.shrink for b in self.up]
        self._bottom_shrink = self.bottom.shrink
        self._spans = ([b.span for b in self.down], [b.span for b in self.up], self.bottom.span)

    # ---------------------------------------------------------------- shapes
    @property
    def shape_step(self) -> tuple[int, int, int]:
        """Product of the downsampling factors per axis: valid sizes differ by multiples of it."""
        step = [1, 1, 1]
        for f in self.downsample_factors:
            step = [a * b for a, b in zip(step, f)]
        return tuple(step)  # type: ignore[return-value]

    def _sizes_from_bottom(self, bottom: int, axis: int, *, unpadded: bool = False) -> tuple[int, int] | None:
        """(input, output) sizes along ``axis`` when the bottom level's input (after the last
        pooling) has size ``bottom``, in valid mode (or as if unpadded); None if some feature
        map would be empty."""
        if unpadded:
            down, up, bottom_shrink = self._spans
        else:
            down, up, bottom_shrink = self._down_shrink, self._up_shrink, self._bottom_shrink
        s = bottom
        for level in reversed(range(len(self.downsample_factors))):
            s = s * self.downsample_factors[level][axis] + down[level][axis]
        size_in = s
        s = bottom - bottom_shrink[axis]
        if s < 1:
            return None
        for level in reversed(range(len(self.downsample_factors))):
            s = s * self.downsample_factors[level][axis] - up[level][axis]
            if s < 1:
                return None
        return size_in, s

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, int, int]:
        """Output shape ``(z, y, x)`` for ``input_shape``; ValueError naming the axis, level and
        factor if the input does not fit the downsampling."""
        shape = tuple(int(s) for s in input_shape)
        if len(shape) != 3:
            raise ValueError(f"unet: input shape must be (z, y, x), got {shape}")
        if self.padding == "same":
            return check_divisible("unet", shape, self.shape_step)
        out = []
        for axis, size in enumerate(shape):
            s = size
            for level, f in enumerate(self.downsample_factors):
                s -= self._down_shrink[level][axis]
                if s < 1 or s % f[axis]:
                    nearest = self.valid_input_shape(self.valid_output_shape((1, 1, 1)))[axis]
                    raise ValueError(
                        f"unet: input shape {shape} does not fit: along axis {'zyx'[axis]} the feature map "
                        f"of level {level} has size {s}, not divisible by the downsample factor {f[axis]}; "
                        f"valid input sizes are {nearest} + k*{self.shape_step[axis]} "
                        f"(see valid_input_shape)"
                    )
                s //= f[axis]
            sizes = self._sizes_from_bottom(s, axis)
            if sizes is None:
                raise ValueError(f"unet: input shape {shape} is too small along axis {'zyx'[axis]}")
            out.append(sizes[1])
        return tuple(out)  # type: ignore[return-value]

    def valid_output_shape(self, min_output_shape: Sequence[int]) -> tuple[int, int, int]:
        """The smallest valid output shape that is >= ``min_output_shape`` on every axis."""
        if self.padding == "same":
            return round_up(min_output_shape, self.shape_step)
        out = [self._first_fit(axis, want)[1] for axis, want in enumerate(min_output_shape)]
        return tuple(out)  # type: ignore[return-value]

    def _first_fit(self, axis: int, want: int) -> tuple[int, int]:
        """(input, output) sizes along ``axis`` of the smallest valid output >= ``want`` (valid mode)."""
        bottom = 1
        while True:
            sizes = self._sizes_from_bottom(bottom, axis)
            if sizes is not None and sizes[1] >= want:
                return sizes
            bottom += 1

    def valid_input_shape(self, output_shape: Sequence[int]) -> tuple[int, int, int]:
        """The input shape that gives exactly ``output_shape``; ValueError proposing the nearest
        valid output shape if there is none."""
        output_shape = tuple(int(s) for s in output_shape)
        if self.padding == "same":
            self.output_shape(output_shape)
            return output_shape  # type: ignore[return-value]
        result = []
        for axis, want in enumerate(output_shape):
            sizes = self._first_fit(axis, want)
            if sizes[1] != want:
                raise ValueError(
                    f"unet: output shape {output_shape} is not valid along axis {'zyx'[axis]}; "
                    f"the nearest valid output shape is {self.valid_output_shape(output_shape)}"
                )
            result.append(sizes[0])
        return tuple(result)  # type: ignore[return-value]

    @property
    def context(self) -> tuple[int, int, int]:
        """Voxels of input needed on each side of an output voxel, per axis ((in - out) / 2 of
        the valid network). For ``padding="same"`` models, the halo that makes tiles agree."""
        out = []
        for axis in range(3):
            bottom, sizes = 1, None
            while sizes is None:
                sizes = self._sizes_from_bottom(bottom, axis, unpadded=True)
                bottom += 1
            out.append((sizes[0] - sizes[1]) // 2)
        return tuple(out)  # type: ignore[return-value]

    # ---------------------------------------------------------------- inference
    @property
    def has_valid_twin(self) -> bool:
        """Whether :meth:`valid_twin` exists: a same-padding UNet built by ``build_model`` with
        no norm that depends on the whole tile (instance / group norm)."""
        return (
            self.padding == "same"
            and getattr(self, "build_config", None) is not None
            and not any(isinstance(m, (nn.InstanceNorm3d, nn.GroupNorm, nn.LayerNorm)) for m in self.modules())
        )

    @property
    def pooling_offset(self) -> tuple[int, int, int]:
        """Per axis, where the valid network's coarsest max-pooling windows start, in input
        voxels from its first input voxel: ``sum_l prod(f_0..f_{l-1}) * span_l / 2`` over the
        down levels. A same-padding network pools windows that start at multiples of
        ``shape_step`` from its tile's first voxel."""
        down_spans = self._spans[0]
        out = []
        for axis in range(3):
            offset, scale = 0, 1
            for level, factor in enumerate(self.downsample_factors):
                offset += scale * (down_spans[level][axis] // 2)
                scale *= factor[axis]
            out.append(offset)
        return tuple(out)  # type: ignore[return-value]

    def valid_twin(self) -> UNet | None:
        """The valid-padding UNet with this same-padding UNet's weights, or None (see
        :attr:`has_valid_twin`).

        A same-padding UNet pools windows that start at multiples of ``shape_step`` from its
        tile's first voxel. Where the twin's input starts ``p`` voxels after such a multiple,
        with ``(p + pooling_offset) % shape_step == 0`` per axis, every max-pooling window of
        the twin is one of this network's, so the twin's output equals this network's output
        wherever zero padding does not reach (``context`` voxels or more from the tile's
        border), and the twin computes only those voxels (about 3x fewer FLOPs than this
        network for a 104^3 tile with a 64^3 centre). ``psc-seg predict`` runs it instead of
        this network (:func:`psc_seg.engine.inference.plan_geometry` places its inputs)."""
        if not self.has_valid_twin:
            return None
        config = self.build_config
        twin = build_model(config["name"], **{**config["kwargs"], "padding": "valid"})
        twin.load_state_dict(self.state_dict())
        weight = self.head.weight
        return twin.to(device=weight.device, dtype=weight.dtype).train(self.training)

    def coarse_levels_to(self, dtype: torch.dtype) -> UNet:
        """Put the weights of every level below full resolution (the bottom, and the
        upsampling into each such level) in ``dtype``; the full-resolution level and the head
        stay as they are, and :meth:`forward` casts each level's input to its weights' dtype.
        Predict's CPU bfloat16 (:mod:`psc_seg.engine.precision`): the full-resolution level
        has the fewest channels, where bfloat16 kernels pay least (measured slower than float32
        there), and it is last before the output, where rounding costs most accuracy."""
        levels = len(self.down)
        for level in range(1, levels):
            for module in (self.down[level], self.up[level], self.upsample_layers[level]):
                module.to(dtype)
        self.bottom.to(dtype)
        first = self.head.weight.dtype
        self._level_dtypes = [first] + [dtype] * levels
        return self

    def _at_level(self, x: torch.Tensor, level: int) -> torch.Tensor:
        dtypes = getattr(self, "_level_dtypes", None)
        return x if dtypes is None else x.to(dtypes[level])

    # ---------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, Z, Y, X)`` -> ``(N, out_channels, Z', Y', X')``."""
        skips = []
        for level, (block, pool) in enumerate(zip(self.down, self.pool)):
            x = block(self._at_level(x, level))
            skips.append(x)
            x = max_pool3d(pool, x)
        x = self.bottom(self._at_level(x, len(self.down)))
        for level in reversed(range(len(self.up))):
            x = self._upsample(level, self._at_level(x, level))
            skip = skips[level]
            if skip.shape[2:] != x.shape[2:]:
                skip = _center_crop(skip, x.shape[2:])
            x = self.up[level](cat_channels([skip, x]))
        return self.final(conv3d(self.head, x))

    def _upsample(self, level: int, x: torch.Tensor) -> torch.Tensor:
        layer = self.upsample_layers[level]
        if isinstance(layer, nn.Sequential) and fast_enabled():
            # nearest upsampling then a 1x1x1 conv: the conv commutes with nearest upsampling,
            # so it runs on the coarse grid (prod(factor) times fewer voxels), same numbers
            upsample, conv = layer
            return upsample(conv3d(conv, x))
        return layer(x)


def unet(in_channels: int = 1, out_channels: int = 3, **kwargs) -> UNet:
    """Build a :class:`UNet`; see its docstring for the keyword options."""
    return UNet(in_channels, out_channels, **kwargs)
