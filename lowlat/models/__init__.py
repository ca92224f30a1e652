"""Model registry: every network takes ``act_layer``; one definition serves ANN, QC-ANN, SNN."""

# Importing the definitions registers them.
from lowlat.models import resnet, small, vgg  # noqa: E402,F401,I001
from lowlat.models.registry import create_model, list_models, model_entrypoint, register_model

__all__ = ["create_model", "list_models", "model_entrypoint", "register_model"]
