"""The demo projects `wakegate demo` (and `make run`) serves: hello, chat and slow.

Each app is a standalone aiohttp script started by the local backend with ``PORT`` set; see
``projects.yaml`` next to this file.
"""

from __future__ import annotations

from pathlib import Path

PROJECTS_FILE = Path(__file__).resolve().parent / "projects.yaml"
