"""Model loading: embedded defaults, hub ids, local dirs; architecture table as data."""
