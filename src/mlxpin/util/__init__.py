"""Small helpers every floor may use: atomic writes and file mutexes, parallel work, hashing."""
