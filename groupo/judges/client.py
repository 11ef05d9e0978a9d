"""A client of an OpenAI-compatible chat endpoint (`POST {url}/chat/completions`): `groupo serve`,
vLLM, llama.cpp's server, or a hosted API. The standard library's HTTP client is enough for a few
JSON POSTs per step, so the judge adds no dependency.

The API key is read from the environment by the caller and held here only: it goes into the
`Authorization` header and nowhere else, and any text of a server's that repeats it (an error
page echoing the header) has it replaced by "***" before it reaches a message or the logs.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass


@dataclass
class Reply:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


class RequestFailed(Exception):
    """One request got no usable reply. kind: unreachable (nothing listens, no route, DNS), timeout,
    http (a status >= 400; `status` holds it) or garbage (not a chat-completions answer)."""

    def __init__(self, kind: str, message: str, status: int = 0):
        super().__init__(message)
        self.kind, self.status = kind, status

    @property
    def retryable(self) -> bool:
        """Worth another try: the server was slow, busy or broke (not: refused, bad key, bad request)."""
        return self.kind in ("timeout", "garbage") or self.status == 429 or self.status >= 500


def base_url(url: str) -> str:
    """`url` without a trailing slash; a bare host (no path) gets /v1, where OpenAI-compatible servers
    put their routes (http://127.0.0.1:8000 -> http://127.0.0.1:8000/v1)."""
    url = url.rstrip("/")
    return url + "/v1" if urllib.parse.urlsplit(url).path in ("", "/") else url


class ChatClient:
    def __init__(self, url: str, *, api_key: str | None = None, timeout_s: float = 60.0):
        self.url, self.timeout_s = base_url(url), timeout_s
        self._key = api_key or None

    def redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _send(self, route: str, body: dict | None, timeout_s: float) -> dict:
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + route, data=data, headers=headers,
                                     method="GET" if body is None else "POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = self.redact(e.read().decode(errors="replace").strip())[:300]
            raise RequestFailed("http", f"{route}: HTTP {e.code}: {detail}", e.code) from None
        except TimeoutError as e:  # connected, then no answer: the server is there but slow
            raise RequestFailed("timeout", f"{route}: no answer in {timeout_s:g} s") from e
        except (urllib.error.URLError, OSError) as e:  # refused, no route, unknown host, or connecting timed out
            reason = getattr(e, "reason", e)
            if isinstance(reason, TimeoutError):
                reason = f"connecting timed out after {timeout_s:g} s"
            raise RequestFailed("unreachable", f"{route}: {self.redact(str(reason))}") from None
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestFailed("garbage", f"{route}: the answer is not JSON: "
                                           f"{self.redact(raw[:120].decode(errors='replace'))!r}") from None

    def models(self, timeout_s: float = 10.0) -> list[str]:
        """The ids the server lists at /models (empty when it answers something else)."""
        data = self._send("/models", None, timeout_s)
        return [m["id"] for m in data.get("data", []) if isinstance(m, dict) and "id" in m] if isinstance(data, dict) \
            else []

    def chat(self, model: str, messages: list[dict], *, max_tokens: int, temperature: float,
             seed: int | None = None) -> Reply:
        """One chat completion; RequestFailed when none came back."""
        body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature}
        if seed is not None:
            body["seed"] = seed
        start = time.monotonic()
        data = self._send("/chat/completions", body, self.timeout_s)
        try:
            text = data["choices"][0]["message"]["content"]
            if not isinstance(text, str):
                raise TypeError(type(text).__name__)
        except (KeyError, IndexError, TypeError) as e:
            raise RequestFailed("garbage", f"/chat/completions: no choices[0].message.content in the answer "
                                           f"({type(e).__name__}) after {time.monotonic() - start:.1f} s") from None
        usage = data.get("usage") or {}
        return Reply(text, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
