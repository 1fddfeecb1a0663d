"""Model shape: the config dataclass, its validation, and the named presets."""
import math
import numbers
from dataclasses import asdict, dataclass, fields, replace

from .errors import TinylmError


class ConfigError(TinylmError):
    pass


def _finite_number(value) -> bool:
    """A real number (numpy's too; not a bool) that is finite as a float: an integer too
    large for a float (JSON allows 1 followed by 400 zeros) is not."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a Llama-style decoder: tied embeddings, RMSNorm, RoPE, SwiGLU."""

    vocab_size: int = 257  # 256 bytes + end-of-text for the default byte tokenizer
    d_model: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 4  # fewer than n_head gives grouped-query attention
    d_ff: int = 344  # SwiGLU hidden width
    context: int = 64  # the longest sequence the model is trained on
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self):
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def validate(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int) and (not isinstance(value, int) or isinstance(value, bool)):
                raise ConfigError(f"{f.name} must be an integer, got {value!r}")
            if f.type in ("float", float) and not _finite_number(value):
                shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
                raise ConfigError(f"{f.name} must be a finite number, got {shown}")
            if value <= 0:
                raise ConfigError(f"{f.name} must be positive, got {value}")
        if self.d_model % self.n_head:
            raise ConfigError(
                f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head}); "
                f"try n_head in {_divisors(self.d_model)}")
        if self.n_head % self.n_kv_head:
            raise ConfigError(
                f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head}); "
                f"try n_kv_head in {_divisors(self.n_head)}")
        if self.head_dim % 2:
            raise ConfigError(
                f"head_dim = d_model / n_head = {self.head_dim} must be even for rotary "
                "position embedding; change d_model or n_head")
        if self.vocab_size < 2:
            raise ConfigError(f"vocab_size must be at least 2, got {self.vocab_size}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        if not isinstance(d, dict):
            raise ConfigError("a model config must be a JSON object of fields, "
                              f"got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown model config field(s): {', '.join(unknown)}")
        return cls(**d)

    def with_(self, **changes) -> "ModelConfig":
        return replace(self, **changes)

    def num_params(self) -> int:
        d, kv = self.d_model, self.n_kv_head * self.head_dim
        attn = d * d * 2 + d * kv * 2  # q, o and k, v projections
        mlp = 3 * d * self.d_ff
        return self.vocab_size * d + self.n_layer * (attn + mlp + 2 * d) + d


def _divisors(n: int) -> list:
    return [k for k in range(1, n + 1) if n % k == 0][:12]


# From a model that trains in about a minute to the shapes of llama2.c's stories models.
PRESETS = {
    "tiny": ModelConfig(d_model=64, n_layer=2, n_head=4, n_kv_head=4, d_ff=176, context=64),
    "baby": ModelConfig(d_model=128, n_layer=4, n_head=4, n_kv_head=4, d_ff=344, context=64),
    "small": ModelConfig(d_model=288, n_layer=6, n_head=6, n_kv_head=6, d_ff=768, context=256),
    "medium": ModelConfig(d_model=512, n_layer=8, n_head=8, n_kv_head=8, d_ff=1376, context=1024),
}


def preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def format_count(n: int) -> str:
    """12345678 -> '12.3M'."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)
