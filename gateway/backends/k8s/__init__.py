"""Pieces of the Kubernetes backend.

``objects``, ``activity`` and ``leader`` are pure (dicts in, values out) and unit-tested exhaustively;
``api`` is the thin I/O layer over kubernetes-asyncio's ``ApiClient`` (requests and watches).
"""
