"""Hugging Face model families <-> our ModelConfig and weights, and the import of a checkpoint series.

`FAMILIES` maps an HF ``model_type`` (config.json) to an `HFFamily`: how its config becomes a
`ModelConfig` (options the family uses but we do not implement are refused with one sentence,
never approximated), the tensors it must hold, and the reshapes between its layout and our
per-head one (``W_Q (H, d, e)``, ``W_O (H, e, d)``, ``W_in (d, m)``; linear weights in HF are
``(out, in)``). Every conversion is a reshape or transpose, so HF -> ours -> HF is bit-identical.

Families: ``gpt2`` (`gpt2.py`), ``gpt_neox`` (Pythia: parallel or sequential residual,
partial rotate-half rotary, fused per-head QKV, untied ``embed_out``) and ``llama`` (RMSNorm,
SwiGLU, rotate-half RoPE, grouped-query attention, no biases, tied or untied embeddings).
`import_hf` reads a series of checkpoint folders of one family into one run directory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


from . import gpt2
from .._files import CONFIG_JSON
from ...model import ModelConfig
from ._common import HFFamily
from .llama import llama_config_from_hf, llama_from_hf, llama_hf_config, llama_problems, llama_tensor_shapes, llama_to_hf
from .neox import neox_config_from_hf, neox_from_hf, neox_hf_config, neox_problems, neox_tensor_shapes, neox_to_hf
__all__ = ["HFFamily", "FAMILIES", "family_for_hf", "family_for_config", "model_config_from_hf", "export_hf"]


# -- the registry -------------------------------------------------------------------------------
FAMILIES: dict[str, HFFamily] = {
    "gpt2": HFFamily("gpt2", "GPT2LMHeadModel", "GPT-2 language model", "transformer.", gpt2.model_config_from_hf,
                     gpt2.hf_tensor_shapes, gpt2.from_hf_tensors, gpt2.to_hf_tensors,
                     lambda c: gpt2.hf_config(c), "lm_head.weight", gpt2.gpt2_problems, gpt2.BUFFERS),
    "gpt_neox": HFFamily("gpt_neox", "GPTNeoXForCausalLM", "GPT-NeoX language model", "gpt_neox.", neox_config_from_hf, neox_tensor_shapes,
                         neox_from_hf, neox_to_hf, neox_hf_config, "embed_out.weight", neox_problems,
                         ("attention.bias", "attention.masked_bias", "rotary_emb.inv_freq")),
    "llama": HFFamily("llama", "LlamaForCausalLM", "Llama language model", "model.", llama_config_from_hf, llama_tensor_shapes,
                      llama_from_hf, llama_to_hf, llama_hf_config, "lm_head.weight", llama_problems,
                      ("rotary_emb.inv_freq",)),
}


def family_for_hf(cfg: Mapping[str, Any], where: str = CONFIG_JSON) -> HFFamily:
    """The family of a config.json by its ``model_type`` (GPT-2 when it has none, as old files)."""
    kind = cfg.get("model_type", "gpt2")
    if kind not in FAMILIES:
        raise ValueError(f"{where} describes a '{kind}' model, which cannot be imported; importable model types "
                         f"are {', '.join(FAMILIES)}")
    return FAMILIES[kind]


def family_for_config(config: ModelConfig, what: str = "this model") -> HFFamily:
    """The family that expresses ``config`` exactly; one sentence naming what stops each otherwise."""
    reasons = []
    for family in FAMILIES.values():
        problems = family.problems(config)
        if not problems:
            return family
        reasons.append(f"not {family.display.split()[0]}, as {', '.join(problems)}")
    raise ValueError(f"{what} cannot be written as a Hugging Face checkpoint ({'; '.join(reasons)}); export needs an "
                     "architecture of one family, such as the induction-gpt2 preset")


def export_hf(run_dir: str | os.PathLike[str], step: int, out_dir: str | os.PathLike[str]) -> Path:
    """Write checkpoint ``step`` of a run as an HF directory of its family (config.json + model.safetensors),
    loadable by transformers' AutoModelForCausalLM; nothing is written for an architecture no family expresses."""
    import store
    from .._files import write_checkpoint_dir

    run_dir = Path(run_dir)
    info = store.read_run_json(run_dir)
    if "model" not in info:
        raise ValueError(f"run '{run_dir}' has no model config in run.json; it was not written by this package")
    config = ModelConfig.from_dict(info["model"])
    family = family_for_config(config, f"run '{run_dir}'")
    if family.model_type == "gpt2":
        return gpt2.export_hf(run_dir, step, out_dir)
    leaves = store.open_archive(run_dir).load(int(step))
    run_config = info.get("config", {})
    bos = int(run_config.get("task", {}).get("bos_token", 0)) if isinstance(run_config, Mapping) else 0
    hf_cfg = {**family.hf_config(config), "bos_token_id": bos, "eos_token_id": bos, "torch_dtype": "float32",
              gpt2.CONFIG_KEY: {"source_run": str(run_dir.resolve()), "step": int(step), "model": config.to_dict(),
                                   "config": run_config, "seeds": info.get("seeds", {})}}
    tensors = {(k if k == family.head_name else family.prefix + k): v for k, v in family.to_hf(leaves, config).items()}
    write_checkpoint_dir(Path(out_dir), hf_cfg, tensors)
    return Path(out_dir)


def model_config_from_hf(cfg: Mapping[str, Any], where: str = CONFIG_JSON) -> ModelConfig:
    """Our ModelConfig for a config.json of any registered family."""
    return family_for_hf(cfg, where).config_from_hf(cfg, where)
