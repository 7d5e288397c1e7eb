"""The pinned `mlx_lm.server` runtime: resolve it with uv, install it, check its stamp."""
