"""A small HTTP client of the worker's API, for the CLI (synchronous: a command does one thing)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from monitor.exceptions import MonitorError


class ApiError(MonitorError):
    """The worker's API refused a request; the message has the status and the API's own error."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class WorkerUnreachable(ApiError):
    """Nothing answers at the worker's address (or it did not answer in time)."""


def path(*parts: str, **query: str | int | None) -> str:
    """An API path with each part quoted and the query parameters that are set: path("incidents", id)."""
    text = "/" + "/".join(urllib.parse.quote(part, safe="") for part in parts)
    given = {k: str(v) for k, v in query.items() if v is not None}
    return text + (f"?{urllib.parse.urlencode(given)}" if given else "")


class ApiClient:
    """GET and POST JSON to the worker."""

    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 15.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    def get(self, path: str) -> Any:
        """GET `path` with the bearer token (reads may need one); the decoded JSON body."""
        return self._call(self._authorized(urllib.request.Request(self.base_url + path)))

    def pages(self, path: str, field: str) -> list[Any]:
        """Every item of a paged list (GET /models): `field` of each page, following `next` to the end."""
        items: list[Any] = []
        after: str | None = None
        while True:
            separator = "&" if "?" in path else "?"
            query = f"{separator}{urllib.parse.urlencode({'after': after})}" if after is not None else ""
            page = self.get(path + query)
            items.extend(page[field])
            after = page.get("next")
            if after is None:
                return items

    def post(self, path: str, body: dict[str, Any]) -> Any:
        """POST JSON with the bearer token; the decoded JSON body."""
        request = urllib.request.Request(
            self.base_url + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        return self._call(self._authorized(request))

    def _authorized(self, request: urllib.request.Request) -> urllib.request.Request:
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        return request

    def _call(self, request: urllib.request.Request) -> Any:
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise ApiError(
                f"{request.get_method()} {request.full_url}: {exc.code} {_detail(exc)}", exc.code
            ) from None
        except TimeoutError:
            raise WorkerUnreachable(
                f"the worker at {self.base_url} did not answer within {self.timeout_s:g}s"
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            if isinstance(getattr(exc, "reason", None), TimeoutError):
                raise WorkerUnreachable(
                    f"the worker at {self.base_url} did not answer within {self.timeout_s:g}s"
                ) from None
            raise WorkerUnreachable(
                f"no worker answers at {self.base_url} (start `monitor run`, or pass --url)"
            ) from None
        except ValueError as exc:  # a 200 whose body is not JSON: something else holds the port
            raise ApiError(f"{request.get_method()} {request.full_url}: not a JSON answer ({exc})") from None


def _detail(exc: urllib.error.HTTPError) -> str:
    """The API's `error` field, else the first line of the body, else the reason phrase."""
    text = exc.read().decode(errors="replace").strip()
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("error"):
        return str(body["error"])
    return text.splitlines()[0][:200] if text else str(exc.reason)
