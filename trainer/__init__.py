"""Training: the model, the synthetic tasks, checkpoint schedules and the training loop."""

import store as _store


def _decode_hf(files, args):
    """The ``hf`` decoder of referenced checkpoint archives (imported series read in place)."""
    from .interop.hf.importer import decode_hf_files

    return decode_hf_files(files, args)


_store.register_decoder("hf", _decode_hf)
