"""psc-seg: segment 3D EM and MRI volumes with Parallel Separable 3D Convolution networks."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("psc-seg")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
