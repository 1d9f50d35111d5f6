"""Pieces of the Gradio explorer (app.py): model registry, image helpers, handlers."""
