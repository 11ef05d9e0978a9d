"""A stand-in for an OpenAI-compatible chat server (stdlib http.server, one thread per request)
for the judge's tests: it answers /v1/models and /v1/chat/completions as `mode` says, and
records every request (path, headers, body).

Modes: ok (a verdict worked out from the graded text, `verdict(text)`), group (one line per
response), hang (never answers in time), garbage (not JSON), flaky (HTTP 500 once per text,
then ok), echo_key (HTTP 401 whose body repeats the Authorization header), chatty (a reply with
no verdict), random (a verdict drawn at random: a judge that answers differently every time).
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def verdict(text: str) -> int:
    """The ok mode's score of one graded text: its length in characters, modulo 11 (0 to 10)."""
    return len(text) % 11


def graded(body: dict) -> list[str]:
    """The texts between the nonce markers of a judge request, in order."""
    nonce = re.search(r"<response-([0-9a-f]+)>", body["messages"][0]["content"]).group(1)
    user = body["messages"][-1]["content"]
    return re.findall(rf"<response-{nonce}>\n(.*?)\n</response-{nonce}>", user, flags=re.S)


class FakeJudge:
    def __init__(self, mode: str = "ok"):
        self.mode, self.requests, self.lock = mode, [], threading.Lock()
        self.failed_once: set[str] = set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, payload: bytes, kind: str = "application/json"):
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                self._send(200, json.dumps({"data": [{"id": "fake-judge"}]}).encode())

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                code, payload = outer.answer(body, dict(self.headers))
                if code is None:
                    return
                self._send(code, payload if isinstance(payload, bytes) else json.dumps(payload).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def answer(self, body: dict, headers: dict):
        texts = graded(body)
        if self.mode == "hang":
            time.sleep(3)
            return None, b""
        if self.mode == "garbage":
            return 200, b"<html>502 Bad Gateway</html>"
        if self.mode == "echo_key":
            return 401, {"error": {"message": f"invalid key: {headers.get('Authorization')}"}}
        if self.mode == "flaky" and texts[0] not in self.failed_once:
            self.failed_once.add(texts[0])
            return 500, {"error": {"message": "overloaded"}}
        if self.mode == "chatty":
            reply = "What a lovely answer, I enjoyed reading it."
        elif self.mode == "group":
            reply = "Thinking...\n" + "\n".join(f"Response {k}: {verdict(t)}" for k, t in enumerate(texts, 1))
        elif self.mode == "random":
            reply = f"Score: {random.randint(0, 10)}"
        else:
            reply = f"The response is fine.\nScore: {verdict(texts[0])}"
        return 200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}],
                     "usage": {"prompt_tokens": 100, "completion_tokens": 10}}

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    """A port nothing listens on (bound and released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
