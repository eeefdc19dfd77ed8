"""A small HTTP client of the worker's API, for the CLI (synchronous: a command does one thing)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from monitor.exceptions import MonitorError


class ApiError(MonitorError):
    """The worker's API refused a request or could not be reached."""


class ApiClient:
    """GET and POST JSON to the worker."""

    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 15.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    def get(self, path: str) -> Any:
        """GET `path`; the decoded JSON body."""
        return self._call(urllib.request.Request(self.base_url + path))

    def post(self, path: str, body: dict[str, Any]) -> Any:
        """POST JSON with the bearer token; the decoded JSON body."""
        request = urllib.request.Request(
            self.base_url + path, data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        return self._call(request)

    def _call(self, request: urllib.request.Request) -> Any:
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            try:
                detail = json.loads(detail).get("error", detail)
            except (ValueError, AttributeError):
                pass
            raise ApiError(f"{request.get_method()} {request.full_url}: {exc.code} {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ApiError(f"the worker at {self.base_url} does not answer ({exc}); is `monitor run` up?") from None
