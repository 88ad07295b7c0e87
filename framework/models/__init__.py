"""Where models come from: the embedded defaults, tiny test models, local folders."""

from slimkit.core.artifact import load_pretrained
from slimkit.core.paths import cache_dir
from slimkit.models.configs import model_config
from slimkit.models.loading import (
                                    LoadedModel,
                                    convert_gguf,
                                    count_parameters,
                                    embedded_gemma3,
                                    embedded_smollm2,
                                    load_model,
                                    model_skeleton,
                                    resolve_device,
                                    resolve_dtype,
                                    tiny_model,
                                    tiny_tokenizer,
)

__all__ = ["LoadedModel", "cache_dir", "convert_gguf", "count_parameters", "embedded_gemma3", "embedded_smollm2",
           "load_model", "load_pretrained", "model_config", "model_skeleton", "resolve_device",
           "resolve_dtype", "tiny_model", "tiny_tokenizer"]
