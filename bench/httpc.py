"""A tiny HTTP/1.1 client for the benchmark (Python 3 standard library only).

Why not urllib/http.client: the zone fill and the S-renew pre-creation send hundreds of
thousands of requests, and one keep-alive connection with pipelining (a batch of requests
written at once, responses read back in order) is ~10x faster than one round trip per
request. NGINX answers pipelined requests of one connection strictly in order, so the
i-th response belongs to the i-th request: the fill relies on that to know the creation
order of the sessions.

Only what the benchmark needs: GET, Content-Length bodies (NGINX serves the static file
with one), no chunked encoding, no redirects.
"""

import socket

TIMEOUT = 10.0


class Response:
    __slots__ = ("status", "headers", "body")

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # list of (lower-case name, value) in order
        self.body = body

    def header(self, name):
        """The first value of a header, or None."""
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def set_cookies(self, cookie_name):
        """Values of every `Set-Cookie` for `cookie_name` (just `name=VALUE`'s VALUE)."""
        out = []
        prefix = cookie_name + "="
        for k, v in self.headers:
            if k == "set-cookie" and v.startswith(prefix):
                out.append(v[len(prefix):].split(";", 1)[0])
        return out

    def __repr__(self):
        return f"Response({self.status}, {self.headers}, {self.body!r})"


def request_bytes(port, path="/", cookie=None, extra=()):
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    if cookie:
        lines.append(f"Cookie: {cookie}")
    lines.extend(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class Conn:
    """One keep-alive connection to 127.0.0.1:port."""

    def __init__(self, port):
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _fill(self):
        chunk = self.sock.recv(1 << 18)
        if not chunk:
            raise ConnectionError("connection closed by the server mid-response")
        self.buf += chunk

    def read_response(self):
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            self._fill()
        head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        del self.buf[: end + 4]
        status = int(head[0].split(" ", 2)[1])
        headers = []
        length = 0
        for line in head[1:]:
            k, _, v = line.partition(":")
            k = k.strip().lower()
            v = v.strip()
            headers.append((k, v))
            if k == "content-length":
                length = int(v)
            elif k == "transfer-encoding":
                raise ValueError("chunked responses are not supported by this client")
        while len(self.buf) < length:
            self._fill()
        body = bytes(self.buf[:length])
        del self.buf[:length]
        return Response(status, headers, body)

    def pipeline(self, requests):
        """Sends the requests (bytes) in one write, returns their responses in order."""
        self.sock.sendall(b"".join(requests))
        return [self.read_response() for _ in requests]

    def get(self, path="/", cookie=None, extra=()):
        return self.pipeline([request_bytes(self.port, path, cookie, extra)])[0]


def get(port, path="/", cookie=None, extra=()):
    """One request on a fresh connection."""
    with Conn(port) as c:
        return c.get(path, cookie, extra)


# Requests per connection, well below the benchmark's `keepalive_requests` (after which
# NGINX closes the connection).
PER_CONNECTION = 500_000


def create_sessions(port, n, cookie_name, batch=128, path="/"):
    """Sends `n` cookie-less requests over pipelined keep-alive connections, one after the
    other, and returns the session cookie value each response set, in the order NGINX
    created them."""
    values = []
    req = request_bytes(port, path)
    while len(values) < n:
        with Conn(port) as c:
            end = min(n, len(values) + PER_CONNECTION)
            while len(values) < end:
                k = min(batch, end - len(values))
                for r in c.pipeline([req] * k):
                    got = r.set_cookies(cookie_name)
                    if r.status != 200 or len(got) != 1:
                        raise RuntimeError(f"request {len(values)}: expected 200 and one Set-Cookie: {r}")
                    values.append(got[0])
    return values
