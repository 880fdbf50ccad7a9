"""wakegate: a scale-to-zero HTTP gateway for per-project environments."""

# The one version of wakegate: pyproject.toml reads it (statically: keep it a plain string literal),
# the wheel's metadata and the Dockerfile's VERSION follow it (tests/test_packaging.py).
__version__ = "0.1.0"
