"""Bundled run configs; each module exposes `get_config(arg=None)`."""
