"""Import a Hugging Face checkpoint series (gpt2, gpt_neox, llama) as one run directory, read in place.

By default the run *references* the source safetensors files (`store.references`): its
``checkpoints.ref.json`` records each step's files with their size and a checksum of their header,
and the ``hf`` decoder registered here turns a step's files into the run's leaves when it is read.
``copy=True`` writes a dense ``checkpoints.zarr`` instead (the run then no longer needs the source).
Every directory and tensor header is validated before anything is written.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import gpt2
from .._files import (CONFIG_JSON, build_atomically, header_bytes, is_pickle, read_weight_files, step_from_name,
                        step_pattern as parse_step_pattern,
                        tensor_headers, weight_files)
from .families import FAMILIES, HFFamily, family_for_hf
from ...model import ModelConfig

__all__ = ["import_hf", "expand_series", "decode_hf_files", "DECODER"]

DECODER = "hf"


def decode_hf_files(files: list[str], args: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The run's float32 leaves from one checkpoint's safetensors files (the ``hf`` decoder of
    referenced archives); ``args``: the family's ``model_type`` and our ``model`` config."""
    family = FAMILIES[str(args["model_type"])]
    config = ModelConfig.from_dict(args["model"])
    tensors = {family.strip(k): v for k, v in read_weight_files(files).items()}
    return {k: np.asarray(v, np.float32) for k, v in family.from_hf(tensors, config).items()}


def _check_tensors(path: str, headers: Mapping[str, tuple[tuple[int, ...], str, str]], config: ModelConfig,
                   family: HFFamily) -> None:
    """Every expected tensor present with its shape and a float dtype; nothing unknown."""
    want = family.tensor_shapes(config)
    got = {family.strip(k): v for k, v in headers.items()}
    for name, shape in want.items():
        if name not in got:
            raise ValueError(f"'{path}' has no tensor '{name}' (config.json describes {config.n_layers} layers, "
                             f"d_model {config.d_model}); pass complete {family.display.split()[0]} checkpoints")
        if tuple(got[name][0]) != shape:
            raise ValueError(f"tensor '{name}' in '{got[name][2]}' has shape {tuple(got[name][0])}, config.json implies "
                             f"{shape}; the checkpoint and its config.json disagree")
        if got[name][1] not in ("F16", "BF16", "F32", "F64"):
            raise ValueError(f"tensor '{name}' in '{got[name][2]}' has dtype {got[name][1]}; only float tensors can be "
                             "imported")
    tied_head = config.tied_unembed and family.head_name in got
    extra = [k for k in got if k not in want and not k.endswith(family.buffers)
             and not (tied_head and k == family.head_name)]
    if extra:
        raise ValueError(f"'{got[extra[0]][2]}' holds tensor '{extra[0]}', which is not part of a "
                         f"{family.display}; pass {family.architecture} checkpoints")
    if tied_head and tuple(got[family.head_name][0]) != (config.vocab_size, config.d_model):
        raise ValueError(f"tensor '{family.head_name}' in '{got[family.head_name][2]}' has shape "
                         f"{tuple(got[family.head_name][0])}, expected {(config.vocab_size, config.d_model)} (tied to "
                         "the token embedding)")


def _only_pickles(d: str) -> bool:
    try:
        return all(is_pickle(f) for f in weight_files(d))
    except (ValueError, FileNotFoundError):
        return False  # named by the validation that follows


def expand_series(dirs: list[str]) -> list[str]:
    """Checkpoint folders: each given folder that has no config.json but has sub-folders that do (a
    folder of ``step1000/``, ``checkpoint-2000/``...) stands for those sub-folders."""
    out: list[str] = []
    for d in dirs:
        path = Path(d)
        subs = sorted(str(p) for p in path.iterdir() if (p / CONFIG_JSON).is_file()) if path.is_dir() else []
        if path.is_dir() and not (path / CONFIG_JSON).is_file() and subs:
            out.extend(subs)
        else:
            out.append(d)
    return out


def _plan_import(dirs: list[str], steps: list[int] | None,
                 pattern: re.Pattern[str] | None = None) -> tuple[HFFamily, ModelConfig, dict, list[tuple[int, str]]]:
    if not dirs:
        raise ValueError("no checkpoint directories given; pass at least one Hugging Face checkpoint directory")
    if steps is not None and len(steps) != len(dirs):
        raise ValueError(f"--steps gives {len(steps)} steps for {len(dirs)} directories; give one step per "
                         "directory")
    family, config, first_cfg, first_dir, plan = None, None, {}, "", []
    for i, d in enumerate(dirs):
        cfg, headers, files = tensor_headers(d)
        fam = family_for_hf(cfg, os.path.join(d, CONFIG_JSON))
        if family is not None and fam is not family:
            raise ValueError(f"'{d}' is a {fam.model_type} checkpoint but '{first_dir}' is {family.model_type}; a "
                             "series mixes architectures: import one model's checkpoints per run")
        this = fam.config_from_hf(cfg, os.path.join(d, CONFIG_JSON))
        if config is None:
            family, config, first_cfg, first_dir = fam, this, cfg, d
        elif this != config:
            diff = [k for k, v in this.to_dict().items() if config.to_dict()[k] != v]
            raise ValueError(f"'{d}' has a different architecture from '{first_dir}' ({diff[0]}: "
                             f"{this.to_dict()[diff[0]]} vs {config.to_dict()[diff[0]]}); import one model's "
                             "checkpoints per run")
        _check_tensors(files, headers, this, fam)
        step = steps[i] if steps is not None else step_from_name(d, cfg.get(gpt2.CONFIG_KEY), pattern)
        if step < 0:
            raise ValueError(f"step {step} of '{d}' is negative; steps must be >= 0")
        plan.append((step, d))
    seen: dict[int, str] = {}
    for step, d in plan:
        if step in seen:
            raise ValueError(f"'{seen[step]}' and '{d}' both give step {step}; pass --steps to tell them apart")
        seen[step] = d
    assert family is not None and config is not None
    return family, config, first_cfg, sorted(plan)


def import_hf(dirs: list[str | os.PathLike[str]], out_run_dir: str | os.PathLike[str],
              steps: list[int] | None = None, source: Mapping[str, Any] | None = None, copy: bool = False,
              step_pattern: str | None = None) -> Path:
    """Import HF checkpoint directories of one family (gpt2, gpt_neox, llama) as one run directory.

    A folder holding checkpoint folders stands for all of them (`expand_series`). Steps come from
    ``steps``, else from ``step_pattern`` (a regex whose one group is the step) or the folder names (one
    integer: ``step1000``, ``checkpoint-2000``), else from
    our own provenance in config.json. Every directory and tensor is validated before anything is
    written; the run appears only once complete (built beside ``out_run_dir``, then renamed). By
    default the checkpoints stay where they are (referenced, checked by size and header checksum
    whenever read); ``copy=True`` stores them in the run (float16/bfloat16 widened exactly to float32).
    ``source`` is recorded in run.json as ``hf_source`` (e.g. the repo id and revisions of a series
    from the HF cache).
    """
    import store
    from store.references import file_reference, write_manifest

    from ...run_info import package_versions, run_coords

    names = [os.fspath(d) for d in dirs]
    out = Path(out_run_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"'{out}' already exists and is not empty; pass a new run directory to --out")
    names = expand_series(names)
    pickled = [d for d in names if (Path(d) / CONFIG_JSON).is_file() and _only_pickles(d)]
    copy = copy or bool(pickled)  # a pickle has no header to check: its tensors are converted and stored
    if steps is not None and step_pattern is not None:
        raise ValueError("--steps and --step-pattern both give the steps; pass one of them")
    family, config, hf_cfg, plan = _plan_import(names, steps, None if step_pattern is None else
                                                parse_step_pattern(step_pattern))
    block = hf_cfg.get(gpt2.CONFIG_KEY) if isinstance(hf_cfg.get(gpt2.CONFIG_KEY), Mapping) else {}
    run_config = block.get("config") if isinstance(block.get("config"), Mapping) and block.get("config") else None
    if run_config is None:
        bos = hf_cfg.get("bos_token_id")
        bos = int(bos) if isinstance(bos, int) and 0 <= bos < config.vocab_size else 0
        run_config = {"model": config.to_dict(), "task": {"kind": "imported", "bos_token": bos}}
    info = {"source": f"hf-{family.model_type} import", "hf_model_type": family.model_type,
            "imported_from": [os.path.abspath(d) for d in names], "steps": [s for s, _ in plan],
            "config": run_config, "seeds": block.get("seeds", {}), "model": config.to_dict(),
            "versions": package_versions(), "step_unit": "as named by the checkpoints",
            "checkpoints": ("copied (torch pickles converted)" if pickled else "copied") if copy
            else "referenced in place"}
    if source:
        info["hf_source"] = dict(source)
    info["coords"] = run_coords(info)
    args = {"model_type": family.model_type, "model": config.to_dict()}

    def fill_copy(tmp: Path) -> None:
        store.write_run_json(tmp, info)
        with store.ArchiveWriter(tmp, capacity=len(plan)) as writer:
            for step, d in plan:
                writer.write_checkpoint(step, decode_hf_files([str(f) for f in weight_files(d)], args))

    def fill_references(tmp: Path) -> None:
        refs = [(step, [file_reference(f, header_bytes(f)) for f in weight_files(d)]) for step, d in plan]
        first = decode_hf_files([r["path"] for r in refs[0][1]], args)  # the leaves' names and shapes
        store.write_run_json(tmp, info)
        write_manifest(tmp, decoder=DECODER, decoder_args=args,
                       leaf_specs={k: (v.shape, str(v.dtype)) for k, v in first.items()}, checkpoints=refs)

    build_atomically(out, fill_copy if copy else fill_references)
    return out
