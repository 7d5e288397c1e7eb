"""Everything that runs: launch plans, server processes, the gateway, the mirror, boot units."""
