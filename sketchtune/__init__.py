"""sketchtune: Ray Tune sweeps of timm backbones for sketch image classification."""

__version__ = "0.1.0"
