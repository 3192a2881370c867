"""Synthetic volumes with ground truth: EM-like neuropil and an MRI-like head phantom."""

from psc_seg.synth.em import em_volume
from psc_seg.synth.mri import mri_volume

__all__ = ["em_volume", "mri_volume"]
