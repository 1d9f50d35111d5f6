"""RepTok: an image as one continuous token (Gui et al., ICLR 2026), as a library."""

from reptok.decoder import DECODER_PRESETS, Decoder, DecoderConfig, ImageSpace, ImageSpaceConfig
from reptok.encoder import ENCODER_PRESETS, Encoder, EncoderConfig, EncoderOutput
from reptok.generator import (
    MIXER_PRESETS,
    TEXT_PRESETS,
    MixerGenerator,
    MixerGeneratorConfig,
    TextGenerator,
    TextGeneratorConfig,
)
from reptok.images import ImageLoadError, load_image
from reptok.pipeline import RepTok, RepTokConfig, SamplingConfig
from reptok.text import FrozenTextEncoder, TextEncoderConfig

__version__ = "0.1.0"

__all__ = [
    "DECODER_PRESETS",
    "ENCODER_PRESETS",
    "MIXER_PRESETS",
    "TEXT_PRESETS",
    "Decoder",
    "DecoderConfig",
    "Encoder",
    "EncoderConfig",
    "EncoderOutput",
    "FrozenTextEncoder",
    "ImageLoadError",
    "ImageSpace",
    "ImageSpaceConfig",
    "MixerGenerator",
    "MixerGeneratorConfig",
    "RepTok",
    "RepTokConfig",
    "SamplingConfig",
    "TextEncoderConfig",
    "TextGenerator",
    "TextGeneratorConfig",
    "load_image",
]
