"""One module per verb. Each returns a frozen result and never prints."""
