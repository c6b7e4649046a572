"""The release pipeline: signing keys, evaluation, the model registry, export-sign-publish."""

from cloud_trainer.release.evaluate import evaluate
from cloud_trainer.release.keys import KeyPaths, generate_keypair, load_private_key
from cloud_trainer.release.pipeline import ReleaseConfig, ReleasePipeline, tflite_available
from cloud_trainer.release.registry import Lineage, Registry, RegistryEntry

__all__ = [
    "KeyPaths",
    "Lineage",
    "Registry",
    "RegistryEntry",
    "ReleaseConfig",
    "ReleasePipeline",
    "evaluate",
    "generate_keypair",
    "load_private_key",
    "tflite_available",
]
