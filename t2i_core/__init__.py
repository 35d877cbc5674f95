"""t2i_core: a text-to-image GAN conditioned on a pretrained Transformer text encoder."""

__version__ = "0.1.0"

from .discriminator import Discriminator
from .generator import Generator
from .pipeline import T2IOutput, T2IPipeline, save_model_folder
from .text_encoder import TextEmbedding, TextEncoder

__all__ = ["Discriminator", "Generator", "T2IOutput", "T2IPipeline", "TextEmbedding", "TextEncoder", "save_model_folder"]
