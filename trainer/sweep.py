"""Training sweeps: a grid of configs (`--sweep seed=0..7 --sweep n_layers=2,3`), one run dir per point.

Each point is the base config (preset, file, `--set`) with the swept keys overridden; its run dir
is `OUT/<label>-<value>_...` and its run.json gets `sweep: {label: value}` (so `open_scalars`
shows the values as `run` coords). Points run on a dask cluster (`trainer.executor`) or in this
process. Rerunning a sweep skips finished runs and resumes interrupted ones, so it is idempotent.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import store

from .config import parse_value, resolve_config

__all__ = ["ALIASES", "SweepPoint", "PointResult", "parse_sweeps", "expand_sweep", "run_sweep"]

SEED_KEYS = ("seeds.init_seed", "seeds.train_seed", "seeds.eval_seed")
ALIASES = {  # short sweep keys -> dotted config keys ("seed": all three seeds, less any the user names)
    "seed": "seeds.*", "init_seed": "seeds.init_seed", "train_seed": "seeds.train_seed",
    "eval_seed": "seeds.eval_seed", "n_layers": "model.n_layers", "n_heads": "model.n_heads",
    "d_model": "model.d_model", "steps": "train.steps", "lr": "train.lr", "batch_size": "train.batch_size",
}
_HELP = "use e.g. --sweep seed=0..7 (a range, both ends included) or --sweep n_layers=2,3 (a list)"


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep: its directory, full config and the swept values (label -> value)."""

    name: str
    run_dir: str
    config: dict
    values: dict


@dataclasses.dataclass
class PointResult:
    name: str
    run_dir: str
    status: str  # "trained", "resumed", "finished before"
    checkpoints: int = 0
    final_loss: float = float("nan")
    seconds: float = 0.0


def _values(key: str, text: str) -> list[Any]:
    text = text.strip()
    m = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", text)
    if m:
        lo, hi = int(m.group(1)), int(m.group(2))
        if lo > hi:
            raise ValueError(f"--sweep {key}={text}: the range ends before it starts; {_HELP}")
        return list(range(lo, hi + 1))
    if ".." in text:
        raise ValueError(f"--sweep {key}={text}: a range is two integers A..B; {_HELP}")
    items = [t.strip() for t in text.split(",")]
    if not text or any(not t for t in items):
        raise ValueError(f"--sweep {key}={text!r} has an empty value; {_HELP}")
    values = [parse_value(t) for t in items]
    if len({json.dumps(v) for v in values}) != len(values):
        raise ValueError(f"--sweep {key}={text} repeats a value; list each value once")
    return values


def parse_sweeps(specs: Sequence[str]) -> list[tuple[str, str, list[Any]]]:
    """`key=values` strings -> [(label, dotted config key, values)]; labels are what the user typed."""
    out: list[tuple[str, str, list[Any]]] = []
    for spec in specs:
        if "=" not in spec:
            raise ValueError(f"--sweep expects key=values, got {spec!r}; {_HELP}")
        label, text = (s.strip() for s in spec.split("=", 1))
        key = ALIASES.get(label, label)
        if "." not in key:
            raise ValueError(f"--sweep key {label!r} is neither a short name ({', '.join(sorted(ALIASES))}) nor a "
                             "dotted config key like train.lr")
        if any(k == key for _, k, _ in out):
            raise ValueError(f"--sweep sets {key} twice; give all its values in one --sweep {label}=...")
        out.append((label, key, _values(label, text)))
    if not out:
        raise ValueError(f"no --sweep given; {_HELP}")
    return out


def _dir_part(label: str, value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return f"{label.split('.')[-1]}-{re.sub(r'[^A-Za-z0-9.+-]', '_', text)}"


def expand_sweep(sweeps: Sequence[str], *, out: str, preset: str | None = None, config_file: str | None = None,
                 overrides: Sequence[str] = ()) -> list[SweepPoint]:
    """Every point of the grid (the product of the swept values), each config resolved and validated."""
    grid = parse_sweeps(sweeps)
    swept = {key for _, key, _ in grid}
    clash = [o for o in overrides if o.split("=", 1)[0].strip() in swept]
    if clash:
        raise ValueError(f"--set {clash[0]} is also swept; drop it from --set or from --sweep")
    labels = [label for label, _, _ in grid]
    short = [label.split(".")[-1] for label in labels]
    if len(set(short)) != len(short):
        raise ValueError(f"swept keys {labels} end in the same name; sweep keys whose last parts differ")
    points = []
    named = swept | {o.split("=", 1)[0].strip() for o in overrides}
    seed_keys = [k for k in SEED_KEYS if k not in named]  # `seed` varies every seed the user does not name
    for combo in itertools.product(*(values for _, _, values in grid)):
        sets = [f"{k}={json.dumps(v)}" for (_, key, _), v in zip(grid, combo)
                for k in (seed_keys if key == "seeds.*" else [key])]
        config = resolve_config(preset, config_file, [*overrides, *sets])
        name = "_".join(_dir_part(label, v) for label, v in zip(labels, combo))
        points.append(SweepPoint(name, str(Path(out) / name), config, dict(zip(labels, combo))))
    return points


def _same_config(a: dict, b: dict) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def point_state(point: SweepPoint) -> str:
    """'new', 'resume' or 'finished'; a directory holding something else is a ValueError."""
    run_dir = Path(point.run_dir)
    if not store.is_run_dir(run_dir):
        if (run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir()))
                and not store.is_unstarted_run(run_dir)):  # a point stopped before run.json is new
            raise ValueError(f"'{run_dir}' exists and is not a run of this sweep; move it away or choose another --out")
        return "new"
    stored = store.read_run_json(run_dir).get("config")
    if not isinstance(stored, dict) or not _same_config(stored, json.loads(json.dumps(point.config))):
        raise ValueError(f"'{run_dir}' holds a run with a different config than sweep point {point.values}; "
                         "choose another --out or move that run away")
    steps = [int(s) for s in store.open_archive(run_dir).steps]
    return "finished" if point.config["train"]["steps"] in steps else "resume"


def _record_sweep(point: SweepPoint) -> None:
    info = store.read_run_json(point.run_dir)
    if info.get("sweep") != point.values:
        info["sweep"] = point.values
        store.write_run_json(point.run_dir, info)


def train_point(point: SweepPoint) -> PointResult:
    """Train (or resume, or skip if finished) one sweep point; idempotent, so safe to retry."""
    from .train import train

    state = point_state(point)
    if state == "finished":
        _record_sweep(point)
        return PointResult(point.name, point.run_dir, "finished before",
                           len(store.open_archive(point.run_dir).steps))
    result = train(point.config, point.run_dir, resume=state == "resume")
    _record_sweep(point)
    return PointResult(point.name, point.run_dir, "resumed" if state == "resume" else "trained",
                       len(store.open_archive(point.run_dir).steps), result.final_loss, result.seconds)


def run_sweep(
    sweeps: Sequence[str], *, out: str, preset: str | None = None, config_file: str | None = None,
    overrides: Sequence[str] = (), workers: int | None = None, scheduler: str | None = None,
    on_progress: Callable[[int, int], None] | None = None, log: Callable[[str], None] | None = None,
) -> list[PointResult]:
    """Train the grid of `sweeps` into `out/<name>` dirs, on a dask cluster (or here with `workers=1`).

    Every point is validated before any training starts; finished runs are skipped, interrupted ones resumed.
    `on_progress(done, total)` hears of each run trained (`total` counts the runs left to train).
    """
    from .executor import usable_cores

    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    if workers is not None and scheduler is not None:
        raise ValueError("--workers sizes a local cluster; with --scheduler the cluster's own workers are used, "
                         "so drop --workers")
    points = expand_sweep(sweeps, out=out, preset=preset, config_file=config_file, overrides=overrides)
    states = {p.name: point_state(p) for p in points}
    todo = [p for p in points if states[p.name] != "finished"]
    results = {p.name: train_point(p) for p in points if states[p.name] == "finished"}  # records `sweep`
    if log:
        log(f"{len(todo)} runs to train ({len(points) - len(todo)} finished before) in {out}")
    n_workers = min(workers or usable_cores(), len(todo))
    done = 0
    if on_progress and todo:
        on_progress(0, len(todo))

    def advance() -> None:
        nonlocal done
        done += 1
        if on_progress:
            on_progress(done, len(todo))

    if todo and scheduler is None and n_workers <= 1:
        for p in todo:
            results[p.name] = train_point(p)
            advance()
    elif todo:
        results.update(_on_cluster(todo, n_workers, scheduler, advance, log))
    return [results[p.name] for p in points]


def _on_cluster(points: Sequence[SweepPoint], n_workers: int, scheduler: str | None,
                advance: Callable[[], None], log) -> dict[str, PointResult]:
    from distributed import as_completed

    from .executor import batch_client

    t0 = time.perf_counter()
    out, errors = {}, []
    with batch_client(workers=n_workers, scheduler=scheduler, log=log) as client:
        futures = {client.submit(train_point, p, key=f"train-{p.name}-{time.time_ns()}", retries=1, pure=False): p
                   for p in points}
        for fut in as_completed(futures, loop=client.loop):
            point = futures[fut]
            try:
                out[point.name] = fut.result()
            except Exception as exc:  # noqa: BLE001 - reported together at the end
                errors.append(f"{point.name}: {type(exc).__name__}: {exc}")
            advance()
    if errors:
        raise ValueError(f"{len(errors)} of {len(points)} runs failed (the others are saved): {'; '.join(errors[:3])}; "
                         "fix the cause and rerun the same sweep to train the rest")
    if log:
        log(f"sweep trained {len(points)} runs in {time.perf_counter() - t0:.1f}s")
    return out
