"""Data: grain pipelines (`pipelines.build_datasets`), sources, tokenizers."""
