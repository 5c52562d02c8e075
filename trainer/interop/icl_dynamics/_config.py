"""The run's `config.json`: the model config it implies, its checkpoint files, what is supported."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any


from ...model import ModelConfig


_CKPT_NAME = re.compile(r"^(\d{11})\.eqx$")
_ADAM = ("opt_state[0].mu.", "opt_state[0].nu.")
_SEEDS = ("eval_model_seed", "train_data_seed", "train_model_seed")
# The relabeling split of README section 3; JAX-version independent, so preferred when it applies.
_README_SPLIT = (5, (8.0, 2.0, 0.0), 20)
_EVAL_RENAME = {"acc": "accuracy", "in_context_acc": "in_context_accuracy", "out_context_acc": "out_context_accuracy"}


def _cfg(config_json: dict, key: str) -> Any:
    if key not in config_json:
        raise ValueError(
            f"icl-dynamics config.json lacks the key '{key}'; pass the config.json that main.py wrote for the run"
        )
    return config_json[key]


def _check_supported(config_json: dict) -> None:
    """Refuse settings whose checkpoint layout or forward this importer cannot reproduce exactly."""
    if _cfg(config_json, "pos_embedding_type") != "rope":
        raise ValueError(
            f"icl-dynamics run uses pos_embedding_type={config_json['pos_embedding_type']!r}; only 'rope' runs "
            "can be imported (their checkpoint layout is the documented one)"
        )
    if _cfg(config_json, "no_norm"):
        raise ValueError("icl-dynamics run was trained with --no_norm; only runs with LayerNorm can be imported")
    if _cfg(config_json, "not_causal"):
        raise ValueError("icl-dynamics run was trained with --not_causal; this project's model is always causal")


def _mlp_hidden(config_json: dict) -> int | None:
    ratio = _cfg(config_json, "mlp_ratio")
    return None if ratio is None else int(round(int(_cfg(config_json, "d_model")) * float(ratio)))


def icl_dynamics_model_config(config_json: dict, *, d_in: int = 512) -> ModelConfig:
    """The project's classifier computing exactly the icl-dynamics forward of `config_json`.

    Pre-LN (eps 1e-5, gain and bias), interleaved RoPE with base `sin_time`, no qkv/out-proj
    bias, MLP (`mlp_ratio`, gelu tanh approximation = "gelu_new", biases) or attention-only
    when `mlp_ratio` is null, exemplar map with bias, bias-free label table, unembedding with
    bias. `d_in` is the data's feature size (512 for the Omniglot ResNet-18 features).
    """
    _check_supported(config_json)
    hidden = _mlp_hidden(config_json)
    context_len = int(config_json.get("train_context_len") or 2)
    pe_lens = [int(v) for v in (config_json.get("pe_context_len") or []) if v is not None]
    return ModelConfig(
        n_layers=int(_cfg(config_json, "depth")),
        d_model=int(_cfg(config_json, "d_model")),
        n_heads=int(_cfg(config_json, "num_heads")),
        d_mlp=hidden,
        n_ctx=2 * max([context_len, *pe_lens]) + 1,
        head="classifier",
        vocab_size=0,
        d_in=int(d_in),
        n_labels=int(_cfg(config_json, "model_output_classes")),
        attn_only=hidden is None,
        layernorm=True,
        ln_eps=1e-5,
        activation="gelu_new",
        positional="rope",
        rope_base=float(_cfg(config_json, "sin_time")),
        qkv_bias=False,
        out_bias=False,
        mlp_bias=True,
        tied_unembed=False,
        unembed_bias=True,
    )


def read_icl_dynamics_config(run_folder: str | Path) -> dict:
    """`config.json` of an icl-dynamics run folder; refuse a folder that is not one."""
    folder = Path(run_folder)
    if not folder.is_dir():
        raise ValueError(f"'{folder}' is not a directory; pass an icl-dynamics run folder (config.json, checkpoints/)")
    config_path, ckpt_dir = folder / "config.json", folder / "checkpoints"
    if not config_path.is_file() or not ckpt_dir.is_dir():
        lacking = " and ".join(p for p, ok in (("config.json", config_path.is_file()),
                                                ("checkpoints/", ckpt_dir.is_dir())) if not ok)
        raise ValueError(
            f"'{folder}' is not an icl-dynamics run folder: it has no {lacking}; pass the folder main.py wrote "
            "(it holds config.json, checkpoints/ and log.h5)"
        )
    try:
        config_json = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"'{config_path}' is not valid JSON ({exc}); restore the run's config.json") from None
    if not isinstance(config_json, dict) or "d_model" not in config_json or "depth" not in config_json:
        raise ValueError(f"'{config_path}' is not an icl-dynamics config (no d_model/depth keys)")
    return config_json


def checkpoint_files(run_folder: str | Path) -> list[tuple[int, Path]]:
    """`(sequences, path)` of every `checkpoints/NNNNNNNNNNN.eqx`, sorted by step."""
    ckpt_dir = Path(run_folder) / "checkpoints"
    found = []
    for p in sorted(ckpt_dir.iterdir()) if ckpt_dir.is_dir() else []:
        m = _CKPT_NAME.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
        elif p.suffix == ".eqx":
            raise ValueError(f"checkpoint file name '{p}' is not 11 digits + .eqx; rename it to the step it holds")
    if not found:
        raise ValueError(f"'{ckpt_dir}' holds no NNNNNNNNNNN.eqx checkpoints; nothing to import")
    return sorted(found)
