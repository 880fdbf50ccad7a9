"""Provision one secure, isolated, scale-to-zero environment per project on Kubernetes.

The contract with the gateway (labels, annotations, names, setting validators) is
:mod:`gateway.contract`. Pure modules:
:mod:`.spec`, :mod:`.envfile`, :mod:`.render`. I/O: :mod:`.apply` (Kubernetes API, credentials from
:mod:`gateway.backends.k8s.client`) and :mod:`.cli` (``wakegate project ...``).
"""
