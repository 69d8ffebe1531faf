"""Loading CLIP-ResNet models and the attention pool re-implemented from its parameters."""
from segclip.models.attnpool import AttentionPool
from segclip.models.loading import CLIPResNet, ModelInfo, available_models, load_model, read_checkpoint

__all__ = ["AttentionPool", "CLIPResNet", "ModelInfo", "available_models", "load_model", "read_checkpoint"]
