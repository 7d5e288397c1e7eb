"""Parsing and rendering: one argparse parser (app), a module per verb group."""
