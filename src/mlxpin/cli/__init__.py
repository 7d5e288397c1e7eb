"""Parsing and rendering: the lean boot parser, the typer app, a module per verb group."""
