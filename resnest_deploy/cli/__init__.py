"""Typer CLI; a thin layer over the library."""
