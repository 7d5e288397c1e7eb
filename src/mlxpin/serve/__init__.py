"""What runs inside an engine server process (its argv names this module path, so it stays)."""
