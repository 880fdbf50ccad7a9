"""Kubernetes credentials → one kubernetes-asyncio ``ApiClient``, for the gateway's Kubernetes backend
and the provisioner's commands alike.

Which credentials: ``--kubeconfig FILE`` (and ``--context``) when given; else a kubeconfig file when
there is one (``$KUBECONFIG``, else ``~/.kube/config``); else, inside a pod, its ServiceAccount
(in-cluster config). Nothing found, or a file that does not load, is a :class:`CredentialsError`
whose one-line message says where it looked.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import yaml
from kubernetes_asyncio import client, config

DEFAULT_KUBECONFIG = "~/.kube/config"


class CredentialsError(Exception):
    """No usable Kubernetes credentials; the message (one line) names where they were looked for."""


def kubeconfig_files(kubeconfig: str | Path | None, context: str | None,
                     environ: Mapping[str, str] = os.environ) -> tuple[str, str] | None:
    """``(files, where)``: the kubeconfig file(s) to load (``$KUBECONFIG`` may list several) and how
    to name them in messages; ``None`` for the in-cluster ServiceAccount (a pod without a kubeconfig).
    Raises :class:`CredentialsError` when the file to load does not exist."""
    in_pod = "KUBERNETES_SERVICE_HOST" in environ
    if kubeconfig is not None:
        files, where = str(kubeconfig), f"--kubeconfig {kubeconfig}"
    elif environ.get("KUBECONFIG"):
        files, where = environ["KUBECONFIG"], f"$KUBECONFIG ({environ['KUBECONFIG']})"
    else:
        files, where = str(Path(DEFAULT_KUBECONFIG).expanduser()), DEFAULT_KUBECONFIG
    paths = [Path(f).expanduser() for f in files.split(os.pathsep) if f]
    if kubeconfig is None and context is None and in_pod and not (paths and paths[0].exists()):
        return None
    if not any(p.is_file() for p in paths):
        hint = "" if kubeconfig is not None or in_pod else \
            " and this is not a pod (KUBERNETES_SERVICE_HOST is not set); pass --kubeconfig FILE"
        raise CredentialsError(f"cannot load Kubernetes credentials from {where}: no such file{hint}")
    return files, where


async def api_client(kubeconfig: str | Path | None = None, context: str | None = None, *,
                     persist_config: bool = False, environ: Mapping[str, str] = os.environ) -> client.ApiClient:
    """An ``ApiClient`` for the credentials :func:`kubeconfig_files` picks. ``persist_config``: write
    refreshed tokens back to the kubeconfig file (as kubectl does; the gateway never writes it).
    Raises :class:`CredentialsError`."""
    cfg = client.Configuration()
    found = kubeconfig_files(kubeconfig, context, environ)
    try:
        if found is None:
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        else:
            await config.load_kube_config(config_file=found[0], context=context, client_configuration=cfg,
                                          persist_config=persist_config)
    except (config.ConfigException, OSError, ValueError, TypeError, yaml.YAMLError) as exc:
        where = "the in-cluster ServiceAccount" if found is None else found[1]
        first_line = (str(exc) or type(exc).__name__).splitlines()[0]
        raise CredentialsError(f"cannot load Kubernetes credentials from {where}: {first_line}") from None
    return client.ApiClient(configuration=cfg)
