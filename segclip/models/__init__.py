"""Loading CLIP-ResNet models (tags, OpenAI archives, state dicts, random init) and their text embeddings."""
from segclip.core.info import ModelInfo
from segclip.models.loading import (
    CLIPResNet,
    ModelConfig,
    available_models,
    load_model,
    read_checkpoint,
)

__all__ = ["CLIPResNet", "ModelConfig", "ModelInfo", "available_models", "load_model", "read_checkpoint"]
