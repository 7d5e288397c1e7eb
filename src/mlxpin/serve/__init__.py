"""Everything that runs: launch plans, server processes, the gateway, boot units."""
