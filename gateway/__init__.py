"""wakegate: a scale-to-zero HTTP gateway for per-project environments."""

__version__ = "0.1.0"
