"""The page a browser sees while its project wakes, and when to show it.

API clients keep the blocking behaviour; only browser navigations get the page (strategy ``auto``),
or every GET (``page``), or never (``block``).

The page is self-contained (inline CSS and JS, no external assets). With JavaScript it polls
:data:`STATUS_PATH` every half second, counts the elapsed time up, and reloads the real page as
soon as the project is ready. Without JavaScript a ``<noscript>`` meta refresh reloads it every
:data:`NOSCRIPT_REFRESH_S` seconds. The data path sends it with :func:`page_response_headers`
(503, ``Retry-After``, ``Cache-Control: no-store`` and a slower ``Refresh`` header as a safety net
should the script be blocked).

When the wake fails the script stops polling and loads the page once more: the data path answers
that navigation, while the failure is recent (:data:`FAILED_PAGE_S`), with the final error page
(:func:`render_failed_page`, status :data:`FAILED_STATUS`, no script, no refresh) instead of
waking the project again. A navigation after that window tries again. A browser navigation to a
suspended project gets a final page of the same kind (:func:`render_suspended_page`, 503): it is
never woken, so there is nothing to wait for.

Neither the page nor the status answer says why a project failed (its stderr, the backend's
reasons): they are public. The page shows the request id, which a user can quote to an operator,
who finds the details in the logs and the admin API.
"""

from __future__ import annotations

import html
import json

# Reserved path on every project host: the waiting page polls it for the project's state.
STATUS_PATH = "/__wakegate/status"
# Status the page is sent with: browsers render 503 bodies; crawlers and caches keep away.
PAGE_STATUS = 503
POLL_INTERVAL_MS = 500
NOSCRIPT_REFRESH_S = 2
# The ``Refresh`` header: a slower fallback for browsers whose script does not run or cannot poll.
REFRESH_HEADER_S = 5
RETRY_AFTER_S = 2
# The final error page: its status, and how long after a failed wake a browser navigation gets it
# rather than a new wake (long enough for the waiting page's own reload to see it).
FAILED_STATUS = 502
FAILED_PAGE_S = 30.0


def wants_page(method: str, accept: str | None, sec_fetch_mode: str | None, strategy: str) -> bool:
    """Whether a request to a sleeping project gets the waiting page instead of being held."""
    if strategy == "block" or method != "GET":
        return False
    if strategy == "page":
        return True
    if sec_fetch_mode is not None and sec_fetch_mode.strip().lower() != "navigate":
        return False
    return accept is not None and "text/html" in accept.lower()


def page_response_headers() -> dict[str, str]:
    """Headers for the waiting page (sent with status :data:`PAGE_STATUS`)."""
    return {
        "Content-Type": "text/html; charset=utf-8",
        "Cache-Control": "no-store",
        "Retry-After": str(RETRY_AFTER_S),
        "Refresh": str(REFRESH_HEADER_S),
        "X-Robots-Tag": "noindex",
    }


def render_status(project: str, state: str, ready: bool) -> bytes:
    """The JSON answer of ``GET`` :data:`STATUS_PATH`: ``{"project", "state", "ready"}`` (nothing
    else: the reason of a failure is not public)."""
    return json.dumps({"project": project, "state": state, "ready": ready}).encode()


def status_response_headers() -> dict[str, str]:
    """Headers for the :data:`STATUS_PATH` answer."""
    return {"Content-Type": "application/json", "Cache-Control": "no-store"}


_MESSAGES = {
    "asleep": "is starting",
    "waking": "is starting",
    "ready": "is ready",
    "failed": "could not start; trying again",
}


# The final pages, by the rejection reason they answer: (what the project did, what to do about it).
_FINAL_PAGES = {
    "failed": ("could not start",
               "The environment failed to start. Reload this page in a minute to try again; if it keeps failing,\n"
               "give the request id below to the people who run it."),
    "suspended": ("is suspended",
                  "The environment is suspended: it is not started until the people who run it resume it.\n"
                  "If you need it, give them the request id below."),
}
#: Rejection reasons a browser navigation is answered with a final page for (rather than plain text).
FINAL_PAGE_REASONS = frozenset(_FINAL_PAGES)


def render_final_page(project: str, reason: str, request_id: str | None = None) -> bytes:
    """A final page (one of :data:`FINAL_PAGE_REASONS`): it says what happened to the project and
    shows the request id, never why; it has no script and does not refresh."""
    what, text = _FINAL_PAGES[reason]
    name = html.escape(project, quote=True)
    rid = "" if request_id is None else \
        f'\n<p class="rid">Request id: <code id="rid">{html.escape(request_id, quote=True)}</code></p>'
    return _FINAL_TEMPLATE.format(name=name, what=what, text=text, state=reason, rid=rid).encode()


def render_failed_page(project: str, request_id: str | None = None) -> bytes:
    """The final error page after a failed wake (sent with :data:`FAILED_STATUS`): it says the
    project could not start and shows the request id, never why; it does not poll or refresh."""
    return render_final_page(project, "failed", request_id)


def render_suspended_page(project: str, request_id: str | None = None) -> bytes:
    """The page a browser navigation to a suspended project gets (sent with the status of the
    ``suspended`` rejection, 503): it says so, and neither polls nor refreshes (nothing will change
    until someone resumes the project)."""
    return render_final_page(project, "suspended", request_id)


def render_page(project: str, state: str, elapsed_s: float, hold_timeout_s: float,
                request_id: str | None = None) -> bytes:
    """The waiting page for ``project`` (in ``state``, waking for ``elapsed_s`` seconds), showing
    ``request_id`` when given."""
    name = html.escape(project, quote=True)
    elapsed = max(0, int(elapsed_s))
    elapsed_text = f"{elapsed} s" if elapsed < 60 else f"{elapsed // 60} min {elapsed % 60} s"
    message = _MESSAGES.get(state, "is starting")
    config = json.dumps({
        "status": STATUS_PATH, "poll": POLL_INTERVAL_MS, "elapsed": max(0.0, float(elapsed_s)),
        "hold": float(hold_timeout_s),
    }).replace("<", "\\u003c")
    return _TEMPLATE.format(
        name=name, message=message, elapsed=elapsed_text, hold=f"{hold_timeout_s:g}", config=config,
        refresh=NOSCRIPT_REFRESH_S, slow="" if elapsed_s >= hold_timeout_s else " hidden",
        state=html.escape(state, quote=True),
        rid="" if request_id is None else
        f'\n<p class="rid">Request id: <code id="rid">{html.escape(request_id, quote=True)}</code></p>',
    ).encode()


# Kept small and dependency-free: it is served while nothing else of the project exists.
_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<noscript><meta http-equiv="refresh" content="{refresh}"></noscript>
<title>{name} is starting…</title>
<style>
:root {{ color-scheme: light dark; --fg: #1d2330; --muted: #5b6475; --bg: #f5f7fa; --card: #fff; --accent: #3a6ff7; }}
@media (prefers-color-scheme: dark) {{
  :root {{ --fg: #e7eaf0; --muted: #a2abbd; --bg: #12151b; --card: #1c2029; --accent: #7b9dff; }}
}}
* {{ box-sizing: border-box; }}
body {{ margin: 0; min-height: 100vh; display: grid; place-items: center; background: var(--bg); color: var(--fg);
  font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }}
main {{ background: var(--card); padding: 2rem 2.5rem; border-radius: 12px; max-width: 32rem; margin: 1rem;
  box-shadow: 0 2px 12px rgba(0, 0, 0, .08); text-align: center; }}
h1 {{ font-size: 1.35rem; margin: 1rem 0 .5rem; word-break: break-word; }}
p {{ margin: .4rem 0; color: var(--muted); }}
.spinner {{ width: 40px; height: 40px; margin: 0 auto; border-radius: 50%; border: 4px solid rgba(128, 128, 128, .25);
  border-top-color: var(--accent); animation: spin 1s linear infinite; }}
@keyframes spin {{ to {{ transform: rotate(360deg); }} }}
@media (prefers-reduced-motion: reduce) {{ .spinner {{ animation: none; }} }}
#elapsed {{ font-variant-numeric: tabular-nums; color: var(--fg); }}
.rid {{ font-size: .8rem; }}
</style>
</head>
<body>
<main role="status" aria-live="polite" data-state="{state}">
<div class="spinner" aria-hidden="true"></div>
<h1><span id="name">{name}</span> <span id="message">{message}</span></h1>
<p>This environment was asleep and is starting. This page loads it as soon as it is ready.</p>
<p>Waiting for <span id="elapsed">{elapsed}</span><span id="slow"{slow}> — longer than usual
(the limit is {hold} s)</span>.</p>{rid}
</main>
<script>
(function () {{
  "use strict";
  var cfg = {config};
  var started = Date.now() - cfg.elapsed * 1000;
  var elapsedEl = document.getElementById("elapsed");
  var messageEl = document.getElementById("message");
  var slowEl = document.getElementById("slow");
  var misses = 0, done = false;
  function tick() {{
    var s = Math.max(0, Math.floor((Date.now() - started) / 1000));
    elapsedEl.textContent = s < 60 ? s + " s" : Math.floor(s / 60) + " min " + (s % 60) + " s";
    slowEl.hidden = s < cfg.hold;
  }}
  function reload() {{
    if (done) return;
    done = true;
    messageEl.textContent = "is ready";
    window.location.reload();
  }}
  function poll() {{
    if (done) return;
    fetch(cfg.status, {{ cache: "no-store", credentials: "same-origin", headers: {{ Accept: "application/json" }} }})
      .then(function (r) {{ return r.ok || r.status === 503 ? r.json() : Promise.reject(r.status); }})
      .then(function (st) {{
        misses = 0;
        if (st.ready) {{ reload(); return; }}
        if (st.state === "failed") {{  // final: the gateway answers the reload with the error page
          done = true;
          messageEl.textContent = "could not start";
          window.location.reload();
          return;
        }}
        messageEl.textContent = "is starting";
        setTimeout(poll, cfg.poll);
      }})
      .catch(function () {{
        // Not our status answer (the project may be serving that path itself now): try the page.
        if (++misses >= 4) {{ reload(); return; }}
        setTimeout(poll, cfg.poll);
      }});
  }}
  tick();
  setInterval(tick, 1000);
  setTimeout(poll, cfg.poll);
}})();
</script>
</body>
</html>
"""

_FINAL_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{name} {what}</title>
<style>
:root {{ color-scheme: light dark; }}
body {{ margin: 0; min-height: 100vh; display: grid; place-items: center;
  font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }}
main {{ padding: 2rem 2.5rem; max-width: 32rem; margin: 1rem; text-align: center; }}
h1 {{ font-size: 1.35rem; word-break: break-word; }}
.rid {{ font-size: .8rem; }}
</style>
</head>
<body>
<main role="alert" data-state="{state}">
<h1><span id="name">{name}</span> {what}</h1>
<p>{text}</p>{rid}
</main>
</body>
</html>
"""
