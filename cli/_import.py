"""`scalars import`: bring checkpoints written by other code in as ordinary run directories.

`--from` picks the format: `hf` (a series of Hugging Face checkpoint directories of one family,
gpt2, gpt_neox or llama, or a folder of them: `trainer.interop.hf.importer.import_hf`; or a repo id with
`--revisions` from the local Hugging Face cache: `trainer.interop.hf.cache`) or `icl-dynamics` (run folders of the icl-dynamics code,
`trainer.interop.icl_dynamics.import_icl_dynamics`).
"""

from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console

from ._errors import user_errors

console = Console()
FORMATS = ("hf", "icl-dynamics")


def _parse_steps(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--steps {text!r} must be comma-separated integers, one per DIR, e.g. 0,100,200") from None


@user_errors
def import_command(
    dirs: list[str] = typer.Argument(..., help="checkpoint directories or a folder of them (hf) or icl-dynamics run folders"),
    out: str = typer.Option(..., "--out", "-o", help="run directory to create (several icl-dynamics runs: one "
                                                    "sub-directory each)"),
    from_: str = typer.Option("hf", "--from", help="source format: hf or icl-dynamics"),
    steps: Optional[str] = typer.Option(None, "--steps", help="hf: the step of each DIR, comma-separated"),
    data: Optional[str] = typer.Option(None, "--data", help="icl-dynamics: the features HDF5 file, or 'synthetic' "
                                                           "for the fixture README's synthetic stand-in"),
    exemplars: Optional[str] = typer.Option(None, "--exemplars", help="icl-dynamics: .npy of exemplar 0 of each "
                                                                     "training class (n_train, d_in)"),
    revisions: Optional[str] = typer.Option(None, "--revisions", help="hf: with a repo id ORG/NAME, the revisions "
                                            "to import from the local Hugging Face cache, comma-separated globs "
                                            "(e.g. 'step*')"),
    download: bool = typer.Option(False, "--download", help="hf: fetch the matching revisions from the hub first "
                                  "(default: the local cache only, offline)"),
    copy: bool = typer.Option(False, "--copy", help="hf: store the checkpoints in the run (a dense archive) "
                              "instead of reading the source files in place"),
    step_pattern: Optional[str] = typer.Option(None, "--step-pattern", help="hf: a regex whose one group is the "
                                               "step in each folder name, e.g. 'iter_(\\d+)_final'"),
) -> None:
    """Import checkpoints from another codebase as a run directory (`--from hf` or `--from icl-dynamics`)."""
    if from_ not in FORMATS:
        raise ValueError(f"--from {from_!r} is not a known format; use one of {', '.join(FORMATS)}")
    if from_ == "hf":
        if data is not None or exemplars is not None:
            raise ValueError("--data and --exemplars apply to --from icl-dynamics only")
        from trainer.interop.hf.cache import is_repo_id, resolve_revisions
        from trainer.interop.hf.importer import import_hf

        if len(dirs) == 1 and is_repo_id(dirs[0]) and (revisions or download):
            if steps is not None:
                raise ValueError("--steps does not apply to a repo id: each revision's step is in its name")
            patterns = [p.strip() for p in (revisions or "*").split(",") if p.strip()]
            found = resolve_revisions(dirs[0], patterns, download=download)
            if step_pattern is not None:
                raise ValueError("--step-pattern does not apply to a repo id: each revision's step is in its name")
            written = import_hf([str(p) for _, _, p in found], out, steps=[s for s, _, _ in found],
                                source={"repo_id": dirs[0], "revisions": [r for _, r, _ in found]}, copy=copy)
        elif len(dirs) == 1 and is_repo_id(dirs[0]) and steps is None:
            raise ValueError(f"'{dirs[0]}' is not a folder here; to import that repo from the Hugging Face cache pass "
                             "--revisions (e.g. --revisions 'step*'), and --download to fetch what is not cached")
        elif revisions is not None or download:
            raise ValueError("--revisions and --download take one repo id ORG/NAME (resolved through the Hugging "
                             f"Face cache), got {', '.join(dirs)}")
        else:
            written = import_hf(dirs, out, steps=None if steps is None else _parse_steps(steps), copy=copy,
                                step_pattern=step_pattern)
        import store

        info = store.read_run_json(written)
        n, in_place = len(info["steps"]), info["checkpoints"] == "referenced in place"
        how = f"referenced in place by {written}" if in_place else f"{info['checkpoints']} into {written}"
        console.print(f"imported {n} checkpoint director{'y' if n == 1 else 'ies'}, {how}"
                      + (" (`scalars verify` re-checks the source files; --copy stores them)" if in_place else ""),
                      soft_wrap=True)
        return
    if copy or step_pattern is not None:
        raise ValueError("--copy and --step-pattern apply to --from hf only")
    if steps is not None:
        raise ValueError("--steps applies to --from hf only; icl-dynamics steps come from the checkpoint file names")
    import store
    from trainer.interop.icl_dynamics import import_icl_dynamics

    for run_dir in import_icl_dynamics(dirs, out, data=data, exemplars=exemplars):
        info = store.read_run_json(run_dir)
        origin = info["probe_data"]["icl_dynamics_exemplar0"]["origin"]
        console.print(f"imported {info['imported_from']} -> {run_dir}: {len(info['steps'])} checkpoints at "
                      f"{info['steps']} training sequences; probe vectors from {origin}", soft_wrap=True)
