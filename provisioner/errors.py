"""Exceptions shared by the provisioner modules."""

from __future__ import annotations


class SpecError(ValueError):
    """Bad input: a one-line message naming the problem. The CLI exits with code 2 and applies nothing."""


class ProvisionError(Exception):
    """The cluster refused or failed an operation; ``exit_code`` is 2 for refusals caused by the input
    (unmanaged namespace, Pod Security violation, invalid object) and 1 for API or transport failures."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
