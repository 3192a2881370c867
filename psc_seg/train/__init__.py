"""Training: samplers, augmentations, class and affinity targets (the convention is
:mod:`psc_seg.affinities`), losses, the loop. Validation runs the stages: :mod:`psc_seg.pipelines.validate`."""
