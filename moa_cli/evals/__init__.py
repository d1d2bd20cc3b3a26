"""Evaluations that need no judge model: `moa eval ifeval` (ifeval.py).

They need the `[eval]` extra (`pip install "moa-chat[eval]"`); nothing here is imported
unless an evaluation runs.
"""
