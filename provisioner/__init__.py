"""Provision one secure, isolated, scale-to-zero environment per project on Kubernetes.

Pure modules: :mod:`.labels` (the contract with the gateway), :mod:`.spec`, :mod:`.envfile`,
:mod:`.render`. I/O: :mod:`.apply` (Kubernetes API) and :mod:`.cli` (``wakegate project ...``).
"""
