"""`log.h5`: the training and evaluation metrics, as this project's metric rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._config import _EVAL_RENAME


def read_log_h5(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """Training and evaluation metrics of `log.h5`.

    Returns `{"train": {"step": int64 (n,), "train_loss", "train_grad_norm", ...},
    "eval": {"step": int64 (k,), "eval_<evaluator>_<metric>": float64 (k,), ...}}`. Train steps are
    `train_iter` (sequences seen after that Adam step); eval steps are `eval_iter`. Each
    evaluator metric is the mean over its eval columns (bools as 0/1); `acc` is renamed
    `accuracy` (`eval_fsl_train_accuracy`, `eval_fsl_train_in_context_accuracy`, ...) as in runs
    trained by this project.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"log file {path} does not exist; pass an icl-dynamics run folder that has its log.h5")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"log file {path} is not a readable HDF5 file ({exc}); copy it again from the run") from None
    with f:
        if "train_iter" not in f or "eval_iter" not in f:
            raise ValueError(f"log file {path} has no train_iter/eval_iter datasets; it is not an icl-dynamics log.h5")
        train_iter = np.asarray(f["train_iter"][...], np.float64)
        steps = np.rint(train_iter).astype(np.int64)
        if not np.array_equal(steps, train_iter):
            raise ValueError(f"log file {path} dataset train_iter holds non-integer sequence counts")
        train: dict[str, np.ndarray] = {"step": steps}
        for name, node in f.items():
            if name.startswith("train_") and name != "train_iter" and isinstance(node, h5py.Dataset):
                values = np.asarray(node[...], np.float64)
                if values.shape != steps.shape:
                    raise ValueError(f"log file {path} dataset {name} has shape {values.shape} but train_iter has "
                                     f"{steps.shape}; the log is truncated or corrupted")
                train[name] = values
        eval_steps = np.asarray(f["eval_iter"][...]).astype(np.int64)
        evals: dict[str, np.ndarray] = {"step": eval_steps}
        for group_name, group in f.items():
            if not isinstance(group, h5py.Group):
                continue
            for metric, node in group.items():
                values = np.asarray(node[...])
                if values.ndim != 2 or values.shape[0] != eval_steps.shape[0]:
                    raise ValueError(f"log file {path} dataset {group_name}/{metric} has shape {values.shape}, "
                                     f"expected ({eval_steps.shape[0]}, n_eval_sequences) to match eval_iter")
                key = f"eval_{group_name}_{_EVAL_RENAME.get(metric, metric)}"
                evals[key] = values.astype(np.float64).mean(axis=1)
    return {"train": train, "eval": evals}


def metric_rows(log: dict, *, train_bs: int | None = None) -> list[tuple[int, dict[str, float]]]:
    """`read_log_h5` output as `(step, values)` rows with strictly increasing steps (for MetricsWriter).

    Train and eval entries at the same sequence count share a row; with `train_bs`, every row
    also gets `optimizer_step = step / train_bs`.
    """
    rows: dict[int, dict[str, float]] = {}
    for part in ("train", "eval"):
        cols = log[part]
        for i, step in enumerate(cols["step"].tolist()):
            row = rows.setdefault(int(step), {})
            row.update({k: float(v[i]) for k, v in cols.items() if k != "step"})
    if train_bs:
        for step, row in rows.items():
            row["optimizer_step"] = step / train_bs
    return sorted(rows.items())
