"""The live, read-only dashboard the worker's web server serves (`/dashboard`).

`handlers.Dashboard` answers the page, its static files and the JSON state the page polls;
`auth` decides who may read it; `state` shapes the published insight documents into that
JSON (selection and ordering only: every number on the page is one an experiment's owner
published on `insights` and stored in `insights_history`). The page itself (`static/`) is
plain HTML, CSS and JavaScript: no build step, no CDN, no library.
"""

from streams.web.handlers import Dashboard, Reply

__all__ = ["Dashboard", "Reply"]
