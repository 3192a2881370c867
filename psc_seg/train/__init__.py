"""Training: samplers, augmentations, targets (affinities, classes), losses, the loop."""
