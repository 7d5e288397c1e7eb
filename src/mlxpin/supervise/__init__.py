"""Engine server processes: start, warm up, restart, the on-demand pool and its runner."""
