"""Building blocks: the PmSCn block, conv-spec parsing and layer factories."""

from psc_seg.nn.layers import (
    ACCEPTED_SPECS,
    ConvSpec,
    make_activation,
    make_convs,
    make_norm,
    parse_conv_spec,
    receptive_span,
    valid_shrink,
)
from psc_seg.nn.psc import PSC, psc_parameter_count, stream_out_channels, subspace_width

__all__ = [
    "ACCEPTED_SPECS",
    "PSC",
    "ConvSpec",
    "make_activation",
    "make_convs",
    "make_norm",
    "parse_conv_spec",
    "psc_parameter_count",
    "receptive_span",
    "stream_out_channels",
    "subspace_width",
    "valid_shrink",
]
