"""Training: the model, the synthetic tasks, checkpoint schedules and the training loop."""

import store as _store


def _decode_hf(files, args):
    """The ``hf`` decoder of referenced checkpoint archives (imported series read in place)."""
    from .interop.hf.importer import decode_hf_files

    return decode_hf_files(files, args)


def _coords(info):
    """Run coords of run.json files written before they carried their own."""
    from .run_info import run_coords

    return run_coords(info)


_store.register_decoder("hf", _decode_hf)
_store.register_coord_reader(_coords)
