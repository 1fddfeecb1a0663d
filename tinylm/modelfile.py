"""A tinylm model file: one .safetensors holding the weights, with the model config and
the tokenizer in its `__metadata__` (a SentencePiece model as a uint8 tensor)."""
import json
import os

import numpy as np

from .checkpoint import CheckpointError, load_safetensors, save_safetensors
from .config import ModelConfig
from .errors import TinylmError
from .model import check_params, param_shapes
from .tokenizer import tokenizer_from_metadata

CONFIG_KEY = "tinylm.config"


def model_tensors_and_metadata(cfg: ModelConfig, params: dict, tokenizer, extra=None):
    meta, tok_tensors = tokenizer.to_metadata()
    meta = dict(meta)
    meta[CONFIG_KEY] = json.dumps(cfg.to_dict())
    meta.update(extra or {})
    tensors = dict(params)
    tensors.update(tok_tensors)
    return tensors, meta


def save_model(path, cfg: ModelConfig, params: dict, tokenizer, extra_metadata=None):
    tensors, meta = model_tensors_and_metadata(cfg, params, tokenizer, extra_metadata)
    save_safetensors(path, tensors, meta)


def read_model(path):
    """Opens a model file: (config, tensors, tokenizer, metadata). Tensors are read-only
    memory maps; a file that is not a tinylm model is refused with a clear error."""
    if os.path.isdir(path):
        inside = os.path.join(path, "model.safetensors")  # where `tinylm train` writes it
        hint = f"; did you mean '{inside}'?" if os.path.isfile(inside) else ""
        raise TinylmError(f"'{path}' is a directory, not a model file{hint}")
    if os.path.exists(path) and not os.path.isfile(path):  # opening a pipe would wait for it
        raise TinylmError(f"'{path}' is not a regular file (a pipe or a device?); a model is "
                          "memory-mapped, so give a model file on disk")
    try:
        tensors, meta = load_safetensors(path)
    except FileNotFoundError:
        raise TinylmError(f"model file '{path}' does not exist") from None
    except CheckpointError as e:
        raise TinylmError(str(e)) from None
    if CONFIG_KEY not in meta:
        raise TinylmError(f"'{path}' is a safetensors file but not a tinylm model "
                          f"(its metadata has no '{CONFIG_KEY}')")
    try:
        cfg = ModelConfig.from_dict(json.loads(meta[CONFIG_KEY]))
        tokenizer = tokenizer_from_metadata(meta, tensors)
        check_vocab(cfg, tokenizer)
    except (ValueError, TypeError) as e:
        raise TinylmError(f"'{path}': invalid model metadata: {e}") from None
    return cfg, tensors, tokenizer, meta


def check_vocab(cfg, tokenizer):
    """ValueError unless the config and the tokenizer count the same tokens (the ids of
    one would be out of range in the other, failing at the first such byte or pick)."""
    if cfg.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"the config's vocab_size is {cfg.vocab_size} but its tokenizer has "
                         f"{tokenizer.vocab_size} tokens")


def load_model(path):
    """(config, params, tokenizer) of an fp32 model file; params are read-only memory maps."""
    cfg, tensors, tokenizer, meta = read_model(path)
    params = {name: tensors[name] for name in param_shapes(cfg) if name in tensors}
    try:
        check_params(cfg, params)
    except ValueError as e:
        raise TinylmError(f"'{path}': {e}") from None
    for name, w in params.items():
        if w.dtype != np.float32:
            raise TinylmError(f"'{path}': tensor '{name}' is {w.dtype}, expected float32 "
                              "(is this a quantized model? it needs the int8 engine)")
    return cfg, params, tokenizer
