"""Evaluation lists shipped with the trainer (plain text files; see README.md here)."""
