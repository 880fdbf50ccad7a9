"""The benchmark suite's load generator and test upstream: ``python -m bench.loadgen COMMAND [flags]``.

    rate    open-loop HTTP/1.1 load at a constant rate; latency from the *intended* send time
    burst   N connections, then N requests released at once; when each first response byte arrived
    stream  one large download or upload; bytes per second
    serve   the upstream: 1 KiB responses, large downloads, an upload sink; records when it listens
    watch   when a Kubernetes EndpointSlice collection first has a ready endpoint

Every client command prints one JSON object on stdout. Receive times are the kernel's
(``SO_TIMESTAMPNS``), so the generator's own processing delay is not charged to the system measured.
"""
