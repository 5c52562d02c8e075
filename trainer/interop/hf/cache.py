"""A checkpoint series from the local Hugging Face cache: `ORG/NAME` plus revision patterns.

Public series keep one checkpoint per revision (Pythia's branches `step0` ... `step143000`). The
cache (`huggingface_hub`'s layout: `models--ORG--NAME/refs/<revision>` holding a commit hash,
`snapshots/<hash>/` its files) is read offline; with `download`, the repository's branches are
listed and the matching ones fetched through `huggingface_hub` first. Each revision's step is the
one integer in its name (`step1000` -> 1000).
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

from .._files import step_from_name

__all__ = ["is_repo_id", "cache_root", "resolve_revisions"]


def is_repo_id(source: str) -> bool:
    """`ORG/NAME` that is not a path on disk."""
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not Path(source).exists() and not source.startswith((".", "~"))


def cache_root() -> Path:
    """The Hugging Face hub cache (HF_HUB_CACHE / HF_HOME respected, via huggingface_hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _cached_refs(repo_id: str, root: Path) -> dict[str, Path]:
    """Revision name -> snapshot folder of every ref of `repo_id` in the cache at `root`."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    refs = repo / "refs"
    out = {}
    if refs.is_dir():
        for ref in sorted(refs.rglob("*")):
            if ref.is_file():
                commit = ref.read_text(encoding="utf-8").strip()
                snapshot = repo / "snapshots" / commit
                if snapshot.is_dir():
                    out[str(ref.relative_to(refs))] = snapshot
    return out


def _download(repo_id: str, patterns: list[str], root: Path) -> None:
    """Fetch the config and safetensors files of every branch of `repo_id` matching `patterns`."""
    import huggingface_hub

    try:
        branches = [b.name for b in huggingface_hub.list_repo_refs(repo_id).branches]
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, no access: one sentence
        raise ValueError(f"cannot list the revisions of '{repo_id}' on the Hugging Face hub ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200]}); check the repo id and the network, or import "
                         "what is already cached without --download") from None
    wanted = [b for b in branches if any(fnmatch.fnmatchcase(b, p) for p in patterns)]
    if not wanted:
        raise ValueError(f"no branch of '{repo_id}' matches {', '.join(patterns)} (it has {len(branches)}: "
                         f"{', '.join(sorted(branches)[:8])}{', ...' if len(branches) > 8 else ''})")
    for name in wanted:
        try:
            huggingface_hub.snapshot_download(repo_id, revision=name, cache_dir=root,
                                              allow_patterns=["*.json", "*.safetensors"])
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"downloading revision '{name}' of '{repo_id}' failed ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200]}); nothing was imported") from None


def resolve_revisions(repo_id: str, patterns: list[str], *, download: bool = False,
                      cache_dir: str | os.PathLike[str] | None = None) -> list[tuple[int, str, Path]]:
    """(step, revision, snapshot folder) of every cached revision of `repo_id` matching a glob of
    `patterns`, by step; with `download`, matching branches are fetched first. One-sentence
    ValueErrors: repo not cached, nothing matches, a revision name without one integer."""
    if not patterns:
        raise ValueError(f"importing the repo '{repo_id}' needs --revisions, e.g. --revisions 'step*'")
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    if download:
        _download(repo_id, patterns, root)
    refs = _cached_refs(repo_id, root)
    if not refs:
        raise ValueError(f"'{repo_id}' is not in the Hugging Face cache at {root} (and is not a folder here); "
                         "pass --download to fetch its revisions, or a folder of checkpoint folders")
    matched = {r: p for r, p in refs.items() if any(fnmatch.fnmatchcase(r, pat) for pat in patterns)}
    if not matched:
        raise ValueError(f"no cached revision of '{repo_id}' matches {', '.join(patterns)} (cached: "
                         f"{', '.join(sorted(refs)[:8])}{', ...' if len(refs) > 8 else ''}); pass --download to "
                         "fetch more")
    out = []
    for rev, snapshot in matched.items():
        try:
            step = step_from_name(rev)
        except ValueError:
            raise ValueError(f"revision '{rev}' of '{repo_id}' names no step (one integer, like step1000); "
                             "narrow --revisions to the checkpoint revisions") from None
        out.append((step, rev, snapshot))
    steps = [s for s, _, _ in out]
    if len(set(steps)) != len(steps):
        dup = sorted({s for s in steps if steps.count(s) > 1})[0]
        raise ValueError(f"two revisions of '{repo_id}' name step {dup}; narrow --revisions")
    return sorted(out)
