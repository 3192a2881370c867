"""psc_seg.nn.specs: conv-spec parsing and the replacement rule of make_convs."""

import pytest

from psc_seg.nn import PSC, make_convs, parse_conv_spec


def test_conv_spec_parsing():
    assert str(parse_conv_spec("conv3d")) == "conv3d"
    assert str(parse_conv_spec("PSC( 2 , 3 )")) == "psc(2,3)"
    assert parse_conv_spec("r2plus1d") == parse_conv_spec("psc(1,1)")
    for bad in ["psc(4,1)", "psc(0,1)", "psc(2,0)", "psc(1)", "conv2d", "", "psc(a,b)"]:
        with pytest.raises(ValueError, match="accepted"):
            parse_conv_spec(bad)
    with pytest.raises(ValueError, match="odd"):
        PSC(2, 2, kernel_size=4)
    with pytest.raises(ValueError, match="odd"):
        make_convs("psc(1,1)", 2, 2, kernel_size=4)


def test_replacement_rule():
    assert [type(c).__name__ for c in make_convs("conv3d", 2, 4, num_convs=2)] == ["Conv3d", "Conv3d"]
    assert [type(c).__name__ for c in make_convs("psc(3,1)", 2, 4, num_convs=2)] == ["PSC", "PSC"]
    (group,) = make_convs("psc(2,3)", 2, 4, num_convs=2)
    assert (group.m, group.n) == (2, 3)
