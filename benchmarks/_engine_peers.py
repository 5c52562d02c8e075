"""The two peers of bench_engine.py: the TransformerLens per-checkpoint loop and a plain-JAX loop.

Both compute the standard suite for one checkpoint and return `{type name: (layer, head) array}`:
prev/dup/induction scores from one forward's attention patterns (batch mean, the docs/definitions.md
definitions), then one forward per head with that head's z zeroed, recording the probe loss.

- TransformerLens (what users do today): load the checkpoint's exported GPT-2 directory into a
  Hugging Face `GPT2LMHeadModel`, wrap it with TransformerLens 4.x's `TransformerBridge`, one
  forward with `hook_pattern` hooks, then one `run_with_hooks(..., return_type="loss")` per head
  with its `hook_z` zeroed. torch and transformer-lens come from the optional `bench` extra.
- JAX loop: the checkpoint read from the zarr archive, one jitted clean forward for the scores
  and one jitted full forward per ablation (a cache/cache_mask zeroing that head's z, jit reused
  across heads and checkpoints), a host round trip per ablation as a hook-style user does.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

SCORES = ("prev_token_score", "duplicate_token_score", "induction_score")


def _scores_from_mean_pattern(A, T: int) -> dict[str, np.ndarray]:
    """(..., H, S, S) batch-mean patterns -> the three diagonal scores (..., H)."""
    A = np.asarray(A)
    i, j = np.arange(1, 2 * T + 1), np.arange(T + 1, 2 * T + 1)
    return {"prev_token_score": A[..., i, i - 1].mean(-1), "duplicate_token_score": A[..., j, j - T].mean(-1),
            "induction_score": A[..., j, j - T + 1].mean(-1)}


def tl_ablated_losses(bridge, tokens, n_layers: int, n_heads: int) -> np.ndarray:
    """(layer, head) loss of a TransformerLens model with each head's `hook_z` zeroed in turn (call
    inside `torch.inference_mode()`)."""
    losses = np.zeros((n_layers, n_heads), np.float32)
    for l in range(n_layers):
        for h in range(n_heads):
            def zero_head(z, hook, h=h):  # z: (batch, pos, head, d_head)
                z[:, :, h] = 0.0
                return z

            losses[l, h] = bridge.run_with_hooks(tokens, return_type="loss",
                                                 fwd_hooks=[(f"blocks.{l}.attn.hook_z", zero_head)]).item()
    return losses


def torch_available() -> bool:
    """True if the optional `bench` extra (torch, transformer-lens, transformers) is installed."""
    try:
        import torch  # noqa: F401
        import transformer_lens  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


class TransformerLensLoop:
    """The hook-based per-checkpoint loop on exported HF GPT-2 directories (weights read each time)."""

    def __init__(self, config, tokens: np.ndarray, T: int, threads: int):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local directories only, never the hub
        import torch
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        torch.set_num_threads(threads)
        self.torch = torch
        self.config, self.T = config, T
        self.tokens = torch.tensor(np.asarray(tokens), dtype=torch.long)

    def __call__(self, hf_dir: str | Path) -> dict[str, np.ndarray]:
        torch = self.torch
        from transformer_lens.model_bridge import TransformerBridge
        from transformers import GPT2LMHeadModel

        hf = GPT2LMHeadModel.from_pretrained(str(hf_dir), attn_implementation="eager")
        bridge = TransformerBridge.boot_transformers(str(hf_dir), hf_model=hf, device="cpu")
        L, H = self.config.n_layers, self.config.n_heads
        means = [None] * L

        def keep_pattern(pattern, hook):
            means[hook.layer()] = pattern.mean(0).numpy()  # (H, S, S)

        out = {}
        with torch.inference_mode():
            bridge.run_with_hooks(self.tokens, return_type=None,
                                  fwd_hooks=[(f"blocks.{l}.attn.hook_pattern", keep_pattern) for l in range(L)])
            out.update(_scores_from_mean_pattern(np.stack(means), self.T))
            out["ablated_loss"] = tl_ablated_losses(bridge, self.tokens, L, H)
        return out


class JaxLoop:
    """Separate jitted calls per measurement: the best plain JAX with hook-style caches does."""

    def __init__(self, config, tokens: np.ndarray, T: int):
        import equinox as eqx
        import jax
        import jax.numpy as jnp

        from scalars.engine._program import model_template
        from trainer.model import next_token_losses

        self.jax, self.config, self.T = jax, config, T
        self.shapes, static = model_template(config)
        tokens = jnp.asarray(tokens)
        L, H, S, e = config.n_layers, config.n_heads, tokens.shape[1], config.d_head

        @jax.jit
        def mean_patterns(params):
            model = eqx.combine(params, static)
            clean = jax.vmap(model.call_with_all_aux)(tokens)
            return jnp.stack([o["attn_output"]["pattern"].mean(0) for o in clean["layer_outputs"]])

        def ablated_loss_fn(layer):
            @jax.jit
            def ablated_loss(params, head):
                model = eqx.combine(params, static)
                cache = {"layer_outputs": {layer: {"attn_output": {"z": jnp.zeros((H, S, e), jnp.float32)}}}}
                mask = {"layer_outputs": {layer: {"attn_output": {"z": (jnp.arange(H) == head)[:, None, None]}}}}
                logits = jax.vmap(lambda t: model.call_with_all_aux(t, cache=cache, cache_mask=mask)["logits"])(tokens)
                return jax.vmap(next_token_losses)(logits, tokens).mean()
            return ablated_loss

        self.mean_patterns = mean_patterns
        self.ablated = [ablated_loss_fn(layer) for layer in range(L)]

    def __call__(self, leaves: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from trainer.model import params_from_named

        params = self.jax.device_put(params_from_named(self.shapes, leaves))
        out = _scores_from_mean_pattern(self.mean_patterns(params), self.T)
        L, H = self.config.n_layers, self.config.n_heads
        out["ablated_loss"] = np.array([[float(self.ablated[l](params, h)) for h in range(H)] for l in range(L)],
                                       np.float32)
        return out
