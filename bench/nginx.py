"""nginx as the fast upstream and as the peer reverse proxy (one worker, upstream keep-alive)."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from bench.procs import BenchError, Layout, Proc, spawn, wait_until

BODY_1K = "x" * 1023 + "\n"  # exactly 1,024 bytes

_MAIN = """\
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 32768; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
{http}
}}
"""

_UPSTREAM = """\
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type text/plain;
            return 200 "{body}";
        }}
    }}
"""

# The configuration ops would put in front of a service: keep-alive to the upstream, HTTP/1.1,
# no access log. The streaming paths pass uploads through and buffer downloads in 1 MiB of memory,
# never on disk (bounded memory, back-pressure); this is 3-4x faster than `proxy_buffering off`,
# whose single small buffer costs a write per few KiB.
_PROXY = """\
    upstream backend {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        client_max_body_size 0;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_read_timeout 300s;
        location / {{
            proxy_pass http://backend;
        }}
        location ~ ^/(download|upload) {{
            proxy_pass http://backend;
            proxy_request_buffering off;
            client_body_buffer_size 256k;
            proxy_buffers 16 64k;
            proxy_busy_buffers_size 128k;
            proxy_max_temp_file_size 0;
        }}
    }}
"""


def nginx_binary() -> str:
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if path is None:
        raise BenchError("nginx is not installed (make bench installs nginx-light)")
    return path


def _write_config(directory: Path, http: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "nginx.conf"
    conf.write_text(_MAIN.format(dir=directory, http=http))
    return conf


def upstream_config(directory: Path, port: int | str) -> Path:
    """An nginx answering every request with a fixed 1 KiB body."""
    return _write_config(directory, _UPSTREAM.format(port=port, body=BODY_1K.replace("\n", "\\n")))


def proxy_config(directory: Path, port: int, upstream_port: int) -> Path:
    return _write_config(directory, _PROXY.format(port=port, upstream_port=upstream_port))


def start(name: str, conf: Path, port: int, log_dir: Path, cores: tuple[int, ...]) -> Proc:
    """Run nginx in the foreground with ``conf`` and wait until ``port`` accepts connections."""
    proc = spawn(name, [nginx_binary(), "-e", str(conf.parent / "error.log"), "-c", str(conf), "-g",
                        "daemon off;"], log_dir, cores)
    try:
        wait_until(lambda: proc.listening(port), 10, f"{name} on port {port}")
    except BaseException:
        proc.stop()
        raise
    return proc


def project_command(directory: Path, layout: Layout) -> list[str]:
    """A project command for the local backend: an nginx upstream like :func:`upstream_config`
    on ``$PORT``, pinned to the upstream core, in the foreground."""
    template = upstream_config(directory / "template", "__PORT__")
    script = (
        f'd={shlex.quote(str(directory))}/port-$PORT && mkdir -p "$d" && '
        f'sed -e "s|__PORT__|$PORT|g" -e "s|{template.parent}|$d|g" {shlex.quote(str(template))} > "$d/nginx.conf" && '
        f'exec {shlex.join(layout.taskset(layout.upstream))} {nginx_binary()} -e "$d/error.log" '
        f'-c "$d/nginx.conf" -g "daemon off;"'
    )
    return ["/bin/sh", "-c", script]
