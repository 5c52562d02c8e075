"""Cost of the icl-dynamics analyses on the fixture's final checkpoint, measured side by side in one process.

Ratios printed: the two clamp types (2 x 16 heads, one re-run forward each) against the clean
forward and against `ablated_loss` (16 head ablations, the same kind of work), and the paper's
full probe (78,400 sequences) against `icl_dynamics:stride=16` for the clean-run types, with
the peak resident memory. Run: `.venv/bin/python benchmarks/bench_icl_clamps.py [STRIDE]`
(STRIDE of the probe for the clamp comparison, default 4).
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp

import scalars
from scalars.types._icl import clamp_losses
from scalars.interventions._ablation import head_ablation_metrics
from trainer.interop.icl_dynamics import icl_dynamics_probe, load_icl_dynamics_model, read_icl_dynamics_config

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "icl-dynamics"
RUN = FIXTURES / "omniglot50_rl5_synthetic"


def best_of(fn, repeats: int = 3) -> float:
    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return min(times)


def main(stride: int = 4) -> None:
    config_json = read_icl_dynamics_config(RUN)
    _, model = load_icl_dynamics_model(RUN / "checkpoints" / "00000100000.eqx", config_json)
    arrays = icl_dynamics_probe(config_json, train_exemplar0=FIXTURES / "synthetic_data" / "train_classes_exemplar0.npy")
    probe = scalars.probes.from_classifier_arrays(name="icl_dynamics", **{k: v[::stride] for k, v in arrays.items()})
    params, static = eqx.partition(model, eqx.is_array)
    inputs = {k: jnp.asarray(v) for k, v in probe.inputs.items()}

    def program(work):
        @jax.jit
        def run(params, inputs):
            m = eqx.combine(params, static)
            clean = jax.vmap(m.call_with_all_aux)(inputs)
            return work(m, probe.with_arrays({**probe.arrays, **inputs}), clean)

        return lambda: run(params, inputs)

    print(f"jax {jax.__version__} {jax.default_backend()}; probe {probe.batch_size} sequences (stride {stride}); "
          "best of 3 after compiling")
    t_clean = best_of(program(lambda m, p, c: c["logits"][:, -1].sum()))
    t_ablate = best_of(program(lambda m, p, c: head_ablation_metrics(m, p, c)[0]))
    t_clamps = best_of(program(lambda m, p, c: [clamp_losses(m, p, c, w) for w in ("prev_token", "induction")]))
    print(f"clean forward {t_clean:.2f}s; ablated_loss (16 heads) {t_ablate:.2f}s; both clamp types (32 heads) "
          f"{t_clamps:.2f}s; clamps / ablation {t_clamps / t_ablate:.2f} (work ratio 2.0), "
          f"clamps / clean {t_clamps / t_clean:.1f}")

    types = ["induction_strength", "prev_token_score_corrected", "loss", "accuracy", "layer_removal_loss"]
    times = {}
    for s in (16, 1):
        p = scalars.probes.from_classifier_arrays(name="icl_dynamics", **{k: v[::s] for k, v in arrays.items()})
        fn = scalars.make_compute_fn(types, model.config, p)
        times[s] = best_of(lambda: fn(params), repeats=2)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"{', '.join(types)} on {p.batch_size} sequences: {times[s]:.2f}s per checkpoint; peak RSS so far "
              f"{rss:.2f} GiB")
    print(f"full probe / stride 16: {times[1] / times[16]:.1f}x the time for 16x the sequences")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 4)
