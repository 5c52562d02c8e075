"""Interoperation with other codebases' checkpoints: Hugging Face model families (export, import,
series read in place, the hub cache) in `hf/`, icl-dynamics runs in `icl_dynamics/`; both write
ordinary run directories through the shared atomic file helpers of `_files`."""
