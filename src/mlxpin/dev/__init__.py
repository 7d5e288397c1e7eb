"""Developer tools: the deterministic tiny model and the demo."""
