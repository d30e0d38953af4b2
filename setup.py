"""Shim for Beam's ``--setup_file ./setup.py``: Dataflow workers build and install this project
from it. All metadata lives in pyproject.toml."""
from setuptools import setup

setup()
