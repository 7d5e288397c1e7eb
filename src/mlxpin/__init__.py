"""mlxpin: a reproducible model manifest, lock and offline launcher for mlx_lm.server."""

__version__ = "0.1.0"
