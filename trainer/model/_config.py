"""The model configuration: one frozen dataclass that fully describes an architecture.

It round-trips through JSON (`to_dict` / `from_dict`) and validates itself on construction,
so a bad size or option fails with one sentence before any weight is made.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

from ._head_registry import model_head

Activation = Literal["gelu_new", "gelu", "relu", "swiglu"]
Positional = Literal["learned", "rope", "none"]
Norm = Literal["layernorm", "rmsnorm"]
RopeLayout = Literal["interleaved", "half"]

ACTIVATIONS = ("gelu_new", "gelu", "relu", "swiglu")
POSITIONALS = ("learned", "rope", "none")
NORMS = ("layernorm", "rmsnorm")
ROPE_LAYOUTS = ("interleaved", "half")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a decoder-only transformer with a token-LM or a sequence-classifier head.

    The defaults give a GPT-2 block (pre-LN, learned positions, gelu_new, biases everywhere).
    Other public families are option sets: GPT-NeoX (Pythia) is `positional="rope"`,
    `rope_layout="half"`, `rotary_pct`, `parallel_residual`, exact `gelu`; Llama is
    `norm="rmsnorm"`, `activation="swiglu"`, half-layout rope, `n_kv_heads` (grouped-query
    attention: keys and values shared by `n_heads // n_kv_heads` query heads), no biases.
    `head="classifier"` reads exemplar vectors of size `d_in` and labels in `0..n_labels-1`.
    `head="regression"` reads (x, y) pairs as tokens of size `d_in` = dim(x) + 1 and predicts
    one number per position (in-context linear regression).
    """

    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    d_mlp: int | None = None  # default 4 * d_model
    n_ctx: int = 128  # maximum sequence length (learned positions)
    head: str = "lm"  # a registered model head (`MODEL_HEADS`): lm, classifier, regression
    vocab_size: int = 64  # lm head
    d_in: int = 0  # classifier head: exemplar vector size; regression head: token size dim(x) + 1
    n_labels: int = 0  # classifier head: number of labels
    attn_only: bool = False
    layernorm: bool = True
    ln_eps: float = 1e-5
    activation: Activation = "gelu_new"
    positional: Positional = "learned"
    rope_base: float = 10000.0
    rope_layout: RopeLayout = "interleaved"  # pairs (2i, 2i+1) or GPT-NeoX/Llama's halves (i, i + r/2)
    rotary_pct: float = 1.0  # fraction of each head's dims that rotate (the first int(d_head * pct))
    norm: Norm = "layernorm"  # kind of every norm when `layernorm` is on (rmsnorm: no centring, no bias)
    parallel_residual: bool = False  # resid_post = resid_pre + attn(ln1(resid_pre)) + mlp(ln2(resid_pre))
    n_kv_heads: int | None = None  # key/value heads (grouped-query attention); None: one per query head
    scale_attn_by_inverse_layer_idx: bool = False  # GPT-2 (Stanford CRFM runs): block l's scores / (l + 1)
    qkv_bias: bool = True
    out_bias: bool = True
    mlp_bias: bool = True
    tied_unembed: bool = False
    unembed_bias: bool = False
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("n_layers", "d_model", "n_heads", "n_ctx"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
        if self.d_mlp is not None and (not isinstance(self.d_mlp, int) or self.d_mlp <= 0):
            raise ValueError(f"model.d_mlp must be a positive integer or null, got {self.d_mlp!r}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads}); "
                "change one of them"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown model.activation {self.activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        if self.positional not in POSITIONALS:
            raise ValueError(f"unknown model.positional {self.positional!r}; choose one of {', '.join(POSITIONALS)}")
        head = model_head(self.head)
        if self.norm not in NORMS:
            raise ValueError(f"unknown model.norm {self.norm!r}; choose one of {', '.join(NORMS)}")
        if self.rope_layout not in ROPE_LAYOUTS:
            raise ValueError(f"unknown model.rope_layout {self.rope_layout!r}; choose one of {', '.join(ROPE_LAYOUTS)}")
        if not 0 < self.rotary_pct <= 1:
            raise ValueError(f"model.rotary_pct must be in (0, 1], got {self.rotary_pct}")
        if self.positional == "rope" and (self.rotary_dim % 2 or self.rotary_dim == 0):
            raise ValueError(f"rotary positions need an even, positive number of rotated dims, got "
                             f"int(d_head * rotary_pct) = {self.rotary_dim} (d_head={self.d_head})")
        if self.n_kv_heads is not None and (not isinstance(self.n_kv_heads, int) or isinstance(self.n_kv_heads, bool)
                                            or self.n_kv_heads <= 0 or self.n_heads % self.n_kv_heads):
            raise ValueError(f"model.n_kv_heads must be a positive divisor of model.n_heads ({self.n_heads}) or null, "
                             f"got {self.n_kv_heads!r}")
        head.validate(self)
        if self.ln_eps <= 0:
            raise ValueError(f"model.ln_eps must be positive, got {self.ln_eps}")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def rotary_dim(self) -> int:
        """How many leading dims of each head rotate (GPT-NeoX's rotary_ndims = int(d_head * rotary_pct))."""
        return int(self.d_head * self.rotary_pct)

    @property
    def kv_heads(self) -> int:
        """Key/value heads: `n_kv_heads`, or one per query head."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def mlp_width(self) -> int:
        return self.d_mlp if self.d_mlp is not None else 4 * self.d_model

    @property
    def n_outputs(self) -> int:
        return model_head(self.head).n_outputs(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config key(s) {', '.join(unknown)}; known keys are {', '.join(sorted(known))}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls.from_dict(json.loads(text))
