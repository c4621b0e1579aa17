"""The pure rules: the schedule and the plan, the disk rule, what a checkpoint is, the resume decision,
which resume matches a run, the config checks and every YAML key of the package.

Standard library and pydantic only: no Axolotl, no Transformers, no torch (tests/unit/test_layers.py
imports this package with those blocked). Every seam is a thin layer onto these modules.
"""
