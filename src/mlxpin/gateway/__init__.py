"""The HTTP gateway: routing by label, request checks, relay and rewrite, limits, errors."""
