"""Pieces of the Kubernetes backend.

``objects``, ``peers`` and ``leader`` are pure (dicts in, values out) and unit-tested exhaustively.
I/O: ``client`` loads the credentials into kubernetes-asyncio's ``ApiClient`` (the provisioner uses
it too); ``api`` is the thin layer over it (requests and watches); ``election`` holds the reaper
Lease; ``exchange`` talks to the other gateway replicas' admin ports (the activity exchange);
``legacy`` removes the activity annotations earlier versions wrote.
"""
