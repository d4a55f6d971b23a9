"""`petseg serve`: a local web page and a small HTTP API over one Segmenter.

The standard library's ThreadingHTTPServer runs it: nothing to install beyond petseg, nothing
fetched at run time, and the page is three static files shipped in the package (no CDN, no
build step). The API the page itself uses:

    POST /predict[?output=mask|overlay|cutout]   body: the image file's bytes -> image/png
    GET  /health                                 -> JSON: model type, image size, threshold

Guards, so one bad or greedy client cannot take the server down: uploads above a size limit
(read from Content-Length before the body) and images above a pixel limit (read from the header
before decoding) are refused; a fixed number of inferences run at once and the rest wait a
little, then get 503; a fixed number of connections are served at once; sockets time out.
Requests never name files: the page's files are read once from the package by a fixed table.
Every refusal is a 4xx (503 when busy) with a one-line JSON body {"error": "..."}.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from petseg import __version__
from petseg.errors import PetsegError
from petseg.segmenter import OUTPUTS, Segmenter, TooManyPixels, decode_image_bytes

# path -> (file in petseg/static, content type): the only files a request can reach
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
PAGE_POLICY = "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'"
FORM_TYPES = ("multipart/",)  # curl --data-binary says x-www-form-urlencoded: allowed


@dataclass(frozen=True)
class Limits:
    """What one server accepts and how much it does at once."""

    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000  # a 48-megapixel phone photo fits; a decompression bomb not
    inferences: int = 2  # at once; more only queue for the same cores
    queue_wait_s: float = 10.0  # how long a request waits for an inference before 503
    connections: int = 16  # served at once; bounds the memory held by uploads
    socket_timeout_s: float = 30.0  # a client that stops sending is dropped after this


class ApiError(Exception):
    """A request the server refuses: the status and the one-line message sent back."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class PetsegServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a Segmenter, limits, and a bound on connections at once."""

    daemon_threads = True  # a stop does not wait for slow clients

    def __init__(
        self,
        address: tuple[str, int],
        segmenter: Segmenter,
        limits: Limits = Limits(),
        *,
        quiet: bool = False,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.segmenter = segmenter
        self.limits = limits
        self.quiet = quiet
        self.static = {
            path: ((resources.files("petseg") / "static" / name).read_bytes(), kind)
            for path, (name, kind) in STATIC_FILES.items()
        }
        self.inference_slots = threading.BoundedSemaphore(limits.inferences)
        self.connection_slots = threading.BoundedSemaphore(limits.connections)
        super().__init__(address, PetsegHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.connection_slots.acquire(blocking=False):
            refuse_busy(request)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.connection_slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connection_slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line instead of socketserver's traceback; the server keeps serving."""
        error = sys.exc_info()[1]
        if not isinstance(error, (ConnectionError, TimeoutError)):
            log(f"error while serving {client_address[0]}: {type(error).__name__}: {error}")

    @contextlib.contextmanager
    def inference_slot(self) -> Iterator[None]:
        if not self.inference_slots.acquire(timeout=self.limits.queue_wait_s):
            raise ApiError(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"busy: {self.limits.inferences} predictions are running; retry in a moment",
            )
        try:
            yield
        finally:
            self.inference_slots.release()

    def health(self) -> dict[str, Any]:
        limits = self.limits
        return {
            "status": "ok",
            "petseg_version": __version__,
            **self.segmenter.info(),
            "outputs": list(OUTPUTS),
            "max_upload_bytes": limits.max_upload_bytes,
            "max_pixels": limits.max_pixels,
        }


def error_body(message: str) -> bytes:
    """{"error": message} on one line (json.dumps escapes any newline)."""
    return json.dumps({"error": " ".join(message.split())}).encode("utf-8") + b"\n"


def refuse_busy(request: socket.socket) -> None:
    """A minimal 503 straight on the socket, for a connection over the limit."""
    body = error_body("busy: too many connections at once; retry in a moment")
    head = (
        "HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    with contextlib.suppress(OSError):
        request.settimeout(1.0)
        request.sendall(head.encode("ascii") + body)


class PetsegHandler(BaseHTTPRequestHandler):
    """Routes: GET the page's files and /health; POST /predict. Everything else is refused."""

    server: PetsegServer
    server_version = f"petseg/{__version__}"
    error_content_type = "application/json"
    default_request_version = "HTTP/1.0"  # answer even a garbled request line with a status line

    def setup(self) -> None:
        self.timeout = self.server.limits.socket_timeout_s
        self.body_read = False
        super().setup()

    def do_GET(self) -> None:
        self.answer(self.get)

    def do_POST(self) -> None:
        self.answer(self.post)

    def do_HEAD(self) -> None:
        self.answer(self.refuse_method)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD

    def refuse_method(self) -> None:
        raise ApiError(HTTPStatus.METHOD_NOT_ALLOWED, f"method {self.command} is not allowed")

    def answer(self, route: Any) -> None:
        """Run a route; any refusal becomes its JSON error, anything unforeseen a 500 line."""
        try:
            route()
        except ApiError as error:
            self.discard_body()
            self.send_json_error(error.status, error.message)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as error:  # a bug must not take the server down or leak a traceback
            log(f"internal error on {self.command} {self.path}: {type(error).__name__}: {error}")
            self.send_json_error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")

    def get(self) -> None:
        path = urlsplit(self.path).path
        if path == "/health":
            body = json.dumps(self.server.health()).encode("utf-8")
            self.send_body(HTTPStatus.OK, body, "application/json")
        elif path in self.server.static:
            body, kind = self.server.static[path]
            self.send_body(HTTPStatus.OK, body, kind, {"Content-Security-Policy": PAGE_POLICY})
        elif path == "/predict":
            raise ApiError(HTTPStatus.METHOD_NOT_ALLOWED, "use POST /predict with the image")
        else:
            raise ApiError(HTTPStatus.NOT_FOUND, f"no such page: {path}")

    def post(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/predict":
            if url.path == "/health" or url.path in self.server.static:
                raise ApiError(HTTPStatus.METHOD_NOT_ALLOWED, f"use GET {url.path}")
            raise ApiError(HTTPStatus.NOT_FOUND, f"no such endpoint: {url.path}")
        output = output_of(url.query)
        if self.headers.get("Content-Type", "").lower().startswith(FORM_TYPES):
            raise ApiError(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                "send the image file's bytes as the body, not a form (one image, no fields)",
            )
        png, seconds, size = self.predict(self.read_body(), output)
        headers = {
            "X-Image-Size": f"{size[1]}x{size[0]}",
            "Server-Timing": f"predict;dur={seconds * 1000:.1f}",
            "Content-Disposition": f'inline; filename="{output}.png"',
        }
        self.send_body(HTTPStatus.OK, png, "image/png", headers)

    def predict(self, body: bytes, output: str) -> tuple[bytes, float, tuple[int, int]]:
        """(PNG bytes, seconds taken, (H, W)): decoding, the model and encoding, in one slot."""
        with self.server.inference_slot():
            start = time.perf_counter()
            try:
                photo = decode_image_bytes(body, self.server.limits.max_pixels)
            except TooManyPixels as error:
                raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(error)) from None
            except PetsegError as error:
                raise ApiError(HTTPStatus.BAD_REQUEST, str(error)) from None
            prediction = self.server.segmenter.predict(photo)
            png = prediction.png(output)
            return png, time.perf_counter() - start, prediction.size

    def body_length(self) -> int:
        """The Content-Length, checked against the limit before any of the body is read."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise ApiError(
                HTTPStatus.LENGTH_REQUIRED, "chunked uploads are refused: send a Content-Length"
            )
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            raise ApiError(HTTPStatus.LENGTH_REQUIRED, "send the image with a Content-Length")
        if len(lengths) > 1 or not lengths[0].strip().isdigit():
            raise ApiError(HTTPStatus.BAD_REQUEST, "one Content-Length, a whole number, please")
        length = int(lengths[0])
        limit = self.server.limits.max_upload_bytes
        if length > limit:
            raise ApiError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"upload of {length:,} bytes is over the limit of {limit:,} bytes",
            )
        return length

    def read_body(self) -> bytes:
        length = self.body_length()
        self.body_read = True
        body = self.rfile.read(length)
        if len(body) < length:
            raise ApiError(
                HTTPStatus.BAD_REQUEST, f"body ended after {len(body)} of {length} bytes"
            )
        if not body:
            raise ApiError(HTTPStatus.BAD_REQUEST, "empty body: send the image file's bytes")
        return body

    def discard_body(self) -> None:
        """Read and drop a refused request's body (within the limit), so that closing the
        socket does not reset it before the client reads the answer."""
        if self.body_read or self.command is None:
            return
        self.body_read = True
        try:
            left = self.body_length()
        except ApiError:
            return  # no length to trust: the connection closes after the answer
        with contextlib.suppress(OSError):
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 16))
                if not chunk:
                    break
                left -= len(chunk)

    def send_body(
        self, status: HTTPStatus, body: bytes, kind: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if status == HTTPStatus.SERVICE_UNAVAILABLE:
            self.send_header("Retry-After", "1")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def send_json_error(self, status: HTTPStatus, message: str) -> None:
        with contextlib.suppress(OSError):
            self.send_body(status, error_body(message), "application/json")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The parser's refusals (bad request line, headers too long, unknown method...) as
        JSON too; an unknown method or HTTP version is the client's fault: 405 and 400."""
        self.close_connection = True
        status = HTTPStatus(code)
        if status == HTTPStatus.NOT_IMPLEMENTED:
            status, message = HTTPStatus.METHOD_NOT_ALLOWED, f"method {self.command} not allowed"
        elif status == HTTPStatus.HTTP_VERSION_NOT_SUPPORTED:
            status = HTTPStatus.BAD_REQUEST
        self.send_json_error(status, message or status.phrase)

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            log(f"{self.address_string()} {format % args}")


def output_of(query: str) -> str:
    """The ?output= value (mask when absent); any other parameter is refused."""
    try:
        fields = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"unreadable query: {query[:100]}") from None
    unknown = sorted(set(fields) - {"output"})
    if unknown:
        raise ApiError(
            HTTPStatus.BAD_REQUEST, f"unknown query parameter {unknown[0][:50]!r}; only output"
        )
    values = fields.get("output", ["mask"])
    if len(values) != 1 or values[0] not in OUTPUTS:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"output must be one of {', '.join(OUTPUTS)} (once)")
    return values[0]


def log(message: str) -> None:
    print(f"petseg serve: {message}", file=sys.stderr, flush=True)


def make_server(
    segmenter: Segmenter, host: str, port: int, limits: Limits = Limits(), *, quiet: bool = False
) -> PetsegServer:
    """A bound server, not yet serving; the one-line error for an address that cannot be had."""
    try:
        return PetsegServer((host, port), segmenter, limits, quiet=quiet)
    except OSError as error:
        reason = error.strerror or str(error)
        raise PetsegError(f"cannot listen on {host} port {port} ({reason})") from None


def serve(segmenter: Segmenter, host: str, port: int, limits: Limits = Limits()) -> None:
    """Serve until Ctrl-C or SIGTERM, then stop cleanly."""
    server = make_server(segmenter, host, port, limits)
    bound_port = server.server_address[1]
    shown = f"[{host}]" if ":" in host else host
    print(
        f"petseg serve: {segmenter.model_type} ({segmenter.image_size} px, "
        f"{segmenter.description}) on http://{shown}:{bound_port}/  (Ctrl-C to stop)",
        flush=True,
    )
    if host not in ("127.0.0.1", "localhost", "::1"):
        log(f"listening on {host}: other machines can reach it; it has no login")
    try:
        with sigterm_as_ctrl_c():
            server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print("petseg serve: stopped", flush=True)


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM (docker stop, systemd, kill) stops the server as Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
