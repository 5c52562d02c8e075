"""The issue-10 workload shared by bench_engine.py and bench_memory.py: sizes, run dirs, probe, FLOPs.

"Standard suite" = prev/dup/induction scores + zero-ablated loss of every head on 16 sequences
of BOS + 64 random tokens repeated (129 tokens), vocab 512, GPT-2 blocks with MLP. Run dirs hold
checkpoints with random weights (a base init plus a per-checkpoint perturbation), written with
`store.ArchiveWriter` and a run.json as a trained run has them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import store
from trainer.model import ModelConfig, build_model, named_leaves
from trainer.run_info import package_versions

SUITE = ["prev_token_score", "duplicate_token_score", "induction_score", "ablated_loss"]
PROBE = "repeated_tokens:batch=16,T=64"
BATCH, REPEAT = 16, 64
SIZES = {
    "a": ModelConfig(n_layers=2, n_heads=8, d_model=128, vocab_size=512, n_ctx=160, init_std=0.08),
    "b": ModelConfig(n_layers=4, n_heads=8, d_model=256, vocab_size=512, n_ctx=160, init_std=0.06),
}


def make_run(run_dir: str | Path, config: ModelConfig, n_checkpoints: int, *, seed: int = 0) -> Path:
    """A run dir with `n_checkpoints` checkpoints (steps 0, 10, ...): the init plus growing noise."""
    run_dir = Path(run_dir)
    if (run_dir / "run.json").is_file() and store.open_archive(run_dir).n_committed == n_checkpoints:
        return run_dir
    base = {k: np.asarray(v, np.float32) for k, v in named_leaves(build_model(config, seed=seed)).items()}
    run_config = {"model": config.to_dict(), "task": {"kind": "induction", "bos_token": 0},
                  "seeds": {"init_seed": seed, "train_seed": 0, "eval_seed": 0}}
    store.write_run_json(run_dir, {"source": "benchmark", "config": run_config, "seeds": run_config["seeds"],
                                   "model": config.to_dict(), "versions": package_versions(),
                                   "step_unit": "optimizer steps"})
    rng = np.random.default_rng(seed + 1)
    specs = {k: (v.shape, v.dtype.name) for k, v in base.items()}
    with store.ArchiveWriter(run_dir, specs, capacity=n_checkpoints) as writer:
        for i in range(n_checkpoints):
            scale = 0.5 * i / max(1, n_checkpoints - 1)
            leaves = {k: (v + scale * np.std(v) * rng.standard_normal(v.shape)).astype(np.float32)
                      if np.std(v) > 0 else v for k, v in base.items()}
            writer.write_checkpoint(10 * i, leaves)
    return run_dir


def probe_tokens(config: ModelConfig) -> np.ndarray:
    """The (16, 129) probe tokens the engine builds for `PROBE` on this config."""
    from scalars.engine._run_probes import build_run_probe

    info = {"config": {"task": {"bos_token": 0}}}
    return np.asarray(build_run_probe(PROBE, ".", info, config).arrays["tokens"])


def suite_flops(config: ModelConfig, batch: int = BATCH, seq: int = 2 * REPEAT + 1) -> dict[str, float]:
    """FLOPs of the suite for one checkpoint (2 per multiply-add; softmax, LN, gelu not counted).

    `prefix_reuse` is the issue's count: the clean forward, then per head of layer l its result
    (z_h W_O^h), layer l's MLP, layers l+1.. in full and the unembedding. `total` is what the
    engine's algorithm does (scalars/interventions/_fast_ablation.py): the same, except that layer l's first MLP
    matmul is shared by its heads (each adds only its z through W_O^h W_in, e columns) and the
    ablated runs unembed only the S-1 positions the loss reads. Attention counts the causal pairs."""
    L, H, d, m, V = config.n_layers, config.n_heads, config.d_model, config.mlp_width, config.vocab_size
    e, rows = config.d_head, batch * seq
    causal = seq * (seq + 1) / 2  # query-key pairs a causal layer needs
    attn = 2 * rows * d * 3 * d + 2 * batch * H * causal * e * 2 + 2 * rows * d * d
    mlp = 2 * rows * d * m * 2
    unembed = 2 * rows * d * V
    clean = L * (attn + mlp) + unembed
    prefix, algorithm = clean, clean
    for layer in range(L):
        later = (L - 1 - layer) * (attn + mlp)
        head_out = 2 * rows * e * d
        prefix += H * (head_out + mlp + later + unembed)
        factored_mlp = 2 * rows * e * m + 2 * e * d * m + 2 * rows * m * d
        algorithm += 2 * rows * d * m + H * (head_out + factored_mlp + later + unembed * (seq - 1) / seq)
    return {"clean": clean, "prefix_reuse": prefix, "total": algorithm}
