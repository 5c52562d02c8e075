"""The store's remedies in the command line's words (commands and flags), spoken while a command runs."""

from __future__ import annotations

CLI_WORDS: dict[str, str] = {
    "verify": "run `scalars verify {run}`",
    "verify_scalars": "`scalars verify {run}` lists every damaged cell",
    "written_run": "pass a run directory written by `scalars train` or `scalars import`",
    "trained_run": "pass a run directory written by `scalars train`",
    "train_again": "start the run again with `scalars train --out {run} ...` (it reuses the directory)",
    "resume": "`scalars train --resume {run}`",
    "next_archive_writer": "the next `scalars train --resume`",
    "next_scalars_writer": "the next `scalars compute`",
    "compute_rerun": "rerun `scalars compute`",
    "compute_first": "run `scalars compute {run}` first",
    "compute_again": "delete it and rerun `scalars compute`",
    "recompute_missing_cell": "run `scalars compute {run} --type {name}` to recompute it",
    "recompute_damaged_cell": "run `scalars compute {run} --type {name} --steps {step} --force` to recompute it",
    "force": "recompute it with --force (every step you want it at)",
    "force_or_rename": "use --force to recompute it or another name",
    "force_dim": "use --force on every scalar with that dim or another run directory",
    "stored_probe": "pass the probe they were computed on with --probe",
    "restore_definition": "restore that code, or register the type with an explicit version=",
    "stored_options": "pass the stored options",
    "reimport": "restore the file, or import the series again (`scalars import ... --copy` keeps its own copy)",
    "export_format": "pass --format netcdf or --format csv (or an output file ending in .nc or .csv)",
    "export_type": "pass --type with a stored name",
}
