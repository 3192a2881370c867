"""The model zoo: UNet (EM affinities), DenseNet (MRI tissue), ResNet (classification);
a registry and checkpoints that rebuild a model from the file alone."""

from psc_seg.models.checkpoint import (
    Checkpoint, load_checkpoint, load_weights, read_checkpoint, read_checkpoint_metadata, save_checkpoint,
)
from psc_seg.models.registry import build_model, count_parameters, list_models, model_entry, register_model
from psc_seg.models.densenet import DenseNet
from psc_seg.models.resnet import ResNet
from psc_seg.models.unet import UNet

# The paper's EM UNet (authors' code): 24 fmaps x3 per level, 3 downsamplings of 2x2x2, valid
# convs, LeakyReLU, nearest upsampling + 1x1x1 conv, 3 affinities with a sigmoid.
register_model(
    "unet",
    UNet,
    defaults=dict(
        in_channels=1, out_channels=3, num_fmaps=24, fmap_inc_factor=3,
        downsample_factors=[[2, 2, 2], [2, 2, 2], [2, 2, 2]], padding="valid", upsample="nearest",
        activation="leaky_relu", final_activation="sigmoid", conv="conv3d",
    ),
    description="3D UNet (MALA layout) for EM affinities",
)
# The MRI baseline (Bui et al. 2017): 4 classes (background, CSF, GM, WM). The paper's own
# reproduction ("paper", presets mri/densenet-paper-*): five dense blocks of four BN-ReLU-3^3
# conv layers, transitions without compression, trilinear upsampling heads; growth 21 makes
# it 5.14M parameters with conv3d (the paper: 5.2M).
register_model(
    "densenet",
    DenseNet,
    defaults=dict(in_channels=1, num_classes=4, conv="conv3d"),
    description="3D DenseNet with multi-scale heads for MRI tissue classes",
    variants={"paper": (
        "the paper's DenseNet (5 blocks x 4 layers, no bottleneck or compression)",
        dict(stem_channels=32, growth_rate=21, block_layers=[4, 4, 4, 4, 4], bottleneck_factor=0, compression=1.0,
             upsample="trilinear"),
    )},
)
# ResNet-34 3D, the paper's video backbone (Kinetics-400 classes).
register_model(
    "resnet",
    ResNet,
    defaults=dict(in_channels=3, num_classes=400, layers=[3, 4, 6, 3], conv="conv3d"),
    description="3D ResNet-34 classifier (video / volumes)",
)

__all__ = [
    "Checkpoint",
    "DenseNet",
    "ResNet",
    "UNet",
    "build_model",
    "count_parameters",
    "list_models",
    "load_checkpoint",
    "load_weights",
    "model_entry",
    "read_checkpoint",
    "read_checkpoint_metadata",
    "register_model",
    "save_checkpoint",
]
