"""Small Hugging Face checkpoint series for tests, made from the transformers-written fixtures."""

import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

FIXTURES = Path(__file__).parent / "fixtures" / "hf"
NEOX = "gpt_neox_parallel_rot025"


def make_series(folder: Path, steps=(0, 10, 20), name: str = NEOX, dirname: str = "step{}", seed: int = 0) -> Path:
    """Checkpoint folders copied from a transformers-written fixture, weights perturbed per step."""
    tensors = load_file(FIXTURES / name / "model.safetensors")
    for i, s in enumerate(steps):
        d = folder / dirname.format(s)
        d.mkdir(parents=True)
        shutil.copy(FIXTURES / name / "config.json", d / "config.json")
        rng = np.random.default_rng((seed, i))
        save_file({k: (v + 0.05 * (i + seed) * rng.normal(size=v.shape)).astype(v.dtype) for k, v in tensors.items()},
                  d / "model.safetensors", metadata={"format": "pt"})
    return folder
