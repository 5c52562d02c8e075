"""Hugging Face checkpoints: one module per model family (`gpt2`, `neox`, `llama`, their registry in
`families`), the importer of checkpoint series (`importer`) and the hub cache's layout (`cache`)."""
