"""Cost of full activation access: `call_with_all_aux(...)["out"]` vs a plain jnp GPT-2 forward.

Both are jitted and vmapped over the same batch; timings are interleaved rounds in one process
so machine noise hits both alike. Prints the ratio (goal: <= 1.05).
Usage: python benchmarks/bench_aux_overhead.py [--layers 2 --d-model 128 --batch 16 --seq 129]
"""

from __future__ import annotations

import argparse
import math
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from trainer.model import ModelConfig, build_model


def plain_forward(model, tokens):
    """GPT-2 forward written directly with jnp on the model's weights: no dicts, no cache logic."""
    cfg = model.config

    def ln(x, m):
        mu = x.mean(-1, keepdims=True)
        xc = x - mu
        return xc / jnp.sqrt((xc**2).mean(-1, keepdims=True) + cfg.ln_eps) * m.w + m.b

    T = tokens.shape[0]
    x = model.embed.W_E[tokens] + model.embed.W_pos[:T]
    causal = jnp.tril(jnp.ones((T, T), bool))
    for blk in model.blocks:
        a = blk.attn
        h = ln(x, blk.ln1)
        q = jnp.einsum("td,hde->hte", h, a.W_Q) + a.b_Q[:, None]
        k = jnp.einsum("td,hde->hte", h, a.W_K) + a.b_K[:, None]
        v = jnp.einsum("td,hde->hte", h, a.W_V) + a.b_V[:, None]
        s = jnp.where(causal, jnp.einsum("hqe,hke->hqk", q, k) / math.sqrt(cfg.d_head), -1e30)
        z = jnp.einsum("hqk,hke->hqe", jax.nn.softmax(s, -1), v)
        x = x + jnp.einsum("hte,hed->td", z, a.W_O) + a.b_O
        m = blk.mlp
        x = x + jax.nn.gelu(ln(x, blk.ln2) @ m.W_in + m.b_in, approximate=True) @ m.W_out + m.b_out
    return ln(x, model.ln_final) @ model.W_U


def timeit(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=129)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    cfg = ModelConfig(n_layers=args.layers, d_model=args.d_model, n_heads=args.heads, vocab_size=512, n_ctx=args.seq)
    model = build_model(cfg, seed=0)
    tokens = jax.random.randint(jax.random.key(0), (args.batch, args.seq), 0, 512)

    plain = eqx.filter_jit(lambda m, t: jax.vmap(lambda s: plain_forward(m, s))(t))
    aux_out = eqx.filter_jit(lambda m, t: jax.vmap(lambda s: m.call_with_all_aux(s)["out"])(t))
    aux_all = eqx.filter_jit(lambda m, t: jax.vmap(m.call_with_all_aux)(t))
    np.testing.assert_allclose(np.asarray(plain(model, tokens)), np.asarray(aux_out(model, tokens)), atol=1e-4)

    times = {"plain": [], "aux_out": [], "aux_all": []}
    for _ in range(args.rounds):
        for name, fn in (("plain", plain), ("aux_out", aux_out), ("aux_all", aux_all)):
            times[name].append(timeit(fn, model, tokens, repeats=args.repeats))
    med = {k: float(np.median(v)) for k, v in times.items()}
    print(f"device={jax.devices()[0].platform} L={args.layers} d={args.d_model} H={args.heads} B={args.batch} T={args.seq}")
    for k, v in med.items():
        print(f"  {k:8s} {v * 1e3:8.3f} ms/batch")
    print(f"ratio call_with_all_aux(out only) / plain = {med['aux_out'] / med['plain']:.3f}  (goal <= 1.05)")
    print(f"ratio call_with_all_aux(all intermediates returned) / plain = {med['aux_all'] / med['plain']:.3f}")


if __name__ == "__main__":
    main()
