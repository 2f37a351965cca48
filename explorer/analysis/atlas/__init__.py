"""Token atlas: maps of token states (UMAP / PCA), vocabulary health, LLM-Microscope measures and the
tokenizer inspector. Each module is a pure analysis returning a stored result; umap-learn is imported
only inside `projection.fit_umap`, never at `import explorer`."""
