"""What is declared and pinned: manifest, validation, server options, lock files, edits."""
