"""Building blocks: the PmSCn block, conv-spec parsing and layer factories.

Modules, each importing only those listed before it:

* :mod:`~psc_seg.nn.layers`: activation and norm factories by name (imports only torch);
* :mod:`~psc_seg.nn.fast`: the fast CPU paths for convolutions, activations, concatenation and
  max pooling;
* :mod:`~psc_seg.nn.psc`: the PSC block;
* :mod:`~psc_seg.nn.specs`: conv specs and :func:`make_convs`, which builds conv3d or PSC.

The rest of psc_seg imports from this package, not from its modules.
"""

from psc_seg.nn.fast import (
    cat_channels,
    conv3d,
    fast_enabled,
    fast_paths,
    max_pool3d,
    run_sequential,
    to_channels_last,
)
from psc_seg.nn.layers import make_activation, make_norm
from psc_seg.nn.psc import PSC, kernel_triple, psc_parameter_count, stream_out_channels, subspace_width
from psc_seg.nn.specs import (
    ACCEPTED_SPECS,
    ConvSpec,
    dense_groups,
    make_convs,
    parse_conv_spec,
    receptive_span,
    valid_shrink,
)

__all__ = [
    "ACCEPTED_SPECS",
    "PSC",
    "ConvSpec",
    "cat_channels",
    "dense_groups",
    "conv3d",
    "fast_enabled",
    "fast_paths",
    "kernel_triple",
    "make_activation",
    "make_convs",
    "make_norm",
    "max_pool3d",
    "parse_conv_spec",
    "psc_parameter_count",
    "receptive_span",
    "run_sequential",
    "stream_out_channels",
    "subspace_width",
    "to_channels_last",
    "valid_shrink",
]
