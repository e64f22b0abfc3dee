"""The package version, in one place: `pyproject.toml` reads it from here (`[tool.setuptools.dynamic]`).

Keep it a plain string literal: setuptools reads it without importing the package.
"""

__version__ = "0.1.0"
