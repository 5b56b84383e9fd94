"""BAGEL-7B-MoT inference: checkpoint-compatible with the official release.

pipe = bagel.load(path_or_hub_id, device="cuda")
"""

from bagel.checkpoint import load
from bagel.config import BagelConfig
from bagel.errors import BagelError, CheckpointError, ImageError, InputError
from bagel.flow import SamplerParams
from bagel.kv import KVContext
from bagel.pipeline import BagelPipeline
from bagel.sampling import ImageOutput
from bagel.text_generation import TextOutput

__all__ = [
    "load",
    "BagelConfig",
    "BagelError",
    "CheckpointError",
    "ImageError",
    "InputError",
    "SamplerParams",
    "KVContext",
    "BagelPipeline",
    "ImageOutput",
    "TextOutput",
]
