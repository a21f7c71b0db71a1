"""The status page served at ``GET /ui`` (``index.html``: one self-contained file, package data)."""
