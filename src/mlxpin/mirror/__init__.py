"""`mlxpin mirror`: this host's verified snapshots over the Hub's download protocol."""
