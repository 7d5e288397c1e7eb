"""Boot units: systemd and launchd for `mlxpin launch` and `mlxpin serve`."""
