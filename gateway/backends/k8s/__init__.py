"""Pieces of the Kubernetes backend.

``objects``, ``peers`` and ``leader`` are pure (dicts in, values out) and unit-tested exhaustively;
``api`` is the thin I/O layer over kubernetes-asyncio's ``ApiClient`` (requests and watches), and
``exchange`` the one over the other gateway replicas' admin ports (the activity exchange).
"""
