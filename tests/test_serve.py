"""petseg serve against a real server on 127.0.0.1: the API answers what petseg predict writes,
byte for byte; every bad request gets a 4xx with a one-line JSON error and the server keeps
serving, also under load; and the page works in a real headless Chromium."""

from __future__ import annotations

import contextlib
import fnmatch
import http.client
import io
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from petseg.cli import build_parser, main
from petseg.errors import PetsegError
from petseg.segmenter import Segmenter
from petseg.serve import STATIC_FILES, Limits, PetsegServer, make_server

PROJECT = Path(__file__).resolve().parents[1]
LIMITS = Limits(max_upload_bytes=1_000_000, max_pixels=250_000, socket_timeout_s=5.0)


def photo_bytes(width: int = 61, height: int = 45, seed: int = 0, kind: str = "JPEG") -> bytes:
    """A bright blob on a dark noisy background, encoded: the tiny model finds the blob."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 90, (height, width, 3), dtype=np.uint8)
    pixels[height // 4 : 3 * height // 4, width // 3 : 2 * width // 3] += 150
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=kind, **({"quality": 95} if kind == "JPEG" else {}))
    return buffer.getvalue()


@contextlib.contextmanager
def running(server: PetsegServer) -> Iterator[int]:
    """Serve in a thread; yield the port; stop and close afterwards."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def segmenter(tiny_checkpoint: Path) -> Segmenter:
    """As petseg predict loads it by default (device and precision auto)."""
    return Segmenter.load(tiny_checkpoint)


@pytest.fixture(scope="module")
def server(segmenter: Segmenter) -> Iterator[PetsegServer]:
    served = make_server(segmenter, "127.0.0.1", 0, LIMITS, quiet=True)
    with running(served):
        yield served


@pytest.fixture(scope="module")
def port(server: PetsegServer) -> int:
    return server.server_address[1]


def request(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def raw(port: int, data: bytes) -> tuple[int, bytes]:
    """Send bytes as they are (no client-side fixing of the request); (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def assert_json_error(body: bytes) -> str:
    text = body.decode("utf-8")
    assert text.count("\n") <= 1 and "Traceback" not in text, text
    message = json.loads(text)["error"]
    assert isinstance(message, str) and message
    return message


def test_health_describes_the_model(port: int, segmenter: Segmenter) -> None:
    status, headers, body = request(port, "GET", "/health")
    assert status == 200 and headers["Content-Type"] == "application/json"
    health = json.loads(body)
    assert health["model_type"] == "unet" and health["image_size"] == segmenter.image_size
    assert health["threshold"] == segmenter.threshold
    assert health["max_upload_bytes"] == LIMITS.max_upload_bytes


def test_the_page_is_served_from_the_package_with_a_strict_policy(port: int) -> None:
    status, headers, body = request(port, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    page = body.decode("utf-8")
    assert 'type="file"' in page and "/app.js" in page
    assert not re.search(r"(src|href)=\"https?://", page)  # offline: nothing from elsewhere
    for path, kind in (("/app.js", "text/javascript"), ("/style.css", "text/css")):
        status, headers, body = request(port, "GET", path)
        assert status == 200 and headers["Content-Type"].startswith(kind) and body
        assert b"http://" not in body and b"https://" not in body


def test_the_page_files_are_shipped_as_package_data() -> None:
    """A non-editable install (pip install ., a wheel) carries every file the server reads."""
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((PROJECT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["petseg"]
    files = sorted(p.name for p in (PROJECT / "src" / "petseg" / "static").iterdir())
    assert sorted({name for name, _ in STATIC_FILES.values()}) == files
    for name in files:
        assert any(fnmatch.fnmatch(f"static/{name}", pattern) for pattern in patterns), name


def test_the_api_answers_what_petseg_predict_writes_byte_for_byte(
    port: int, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(photo_bytes(83, 57))
    save_dir = tmp_path / "out"
    argv = [
        "predict",
        "--model_path",
        str(tiny_checkpoint),
        str(photo),
        "--save_dir",
        str(save_dir),
    ]
    assert main([*argv, "--overlay", "--cutout", "--num_workers", "0"]) == 0
    for output, name in (("mask", "cat.png"), ("overlay", "cat_overlay.png"),
                         ("cutout", "cat_cutout.png")):  # fmt: skip
        query = "" if output == "mask" else f"?output={output}"
        status, headers, body = request(port, "POST", f"/predict{query}", photo.read_bytes())
        assert status == 200 and headers["Content-Type"] == "image/png"
        assert headers["X-Image-Size"] == "83x57"
        assert body == (save_dir / name).read_bytes(), output
    with Image.open(save_dir / "cat.png") as mask:
        assert set(np.unique(np.asarray(mask))) == {0, 255}  # not a trivial mask


def multipart(*fields: tuple[str, bytes]) -> tuple[bytes, str]:
    boundary = "petsegboundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.jpg"'
        f"\r\nContent-Type: image/jpeg\r\n\r\n".encode()
        + data
        + b"\r\n"
        for name, data in fields
    ]
    return b"".join(
        parts
    ) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def truncated_jpeg() -> bytes:
    data = photo_bytes(200, 150)
    return data[: len(data) // 2]


def bomb_png() -> bytes:
    """Few bytes, many pixels: 600 x 500 = 300,000, over LIMITS.max_pixels."""
    buffer = io.BytesIO()
    Image.new("L", (600, 500)).save(buffer, format="PNG")
    return buffer.getvalue()


def post(path: str, body: bytes, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: x", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def with_length(path: str, body: bytes, *headers: str) -> bytes:
    return post(path, body, f"Content-Length: {len(body)}", *headers)


FORM, FORM_TYPE = multipart(("image", b"\xff\xd8 first"), ("second", b"\xff\xd8 second"))
BAD_REQUESTS = {
    "not an image": (with_length("/predict", b"hello, I am text"), 400),
    "truncated image": (with_length("/predict", truncated_jpeg()), 400),
    "empty body": (with_length("/predict", b""), 400),
    "too large": (post("/predict", b"", f"Content-Length: {LIMITS.max_upload_bytes + 1}"), 413),
    "too many pixels": (with_length("/predict", bomb_png()), 413),
    "chunked": (post("/predict", b"5\r\nhello\r\n0\r\n\r\n", "Transfer-Encoding: chunked"), 411),
    "no length": (post("/predict", b""), 411),
    "two lengths": (post("/predict", b"abc", "Content-Length: 3", "Content-Length: 3"), 400),
    "form with two fields": (with_length("/predict", FORM, f"Content-Type: {FORM_TYPE}"), 415),
    "unknown output": (with_length("/predict?output=everything", b"x"), 400),
    "output twice": (with_length("/predict?output=mask&output=cutout", b"x"), 400),
    "unknown parameter": (with_length("/predict?path=/etc/passwd", b"x"), 400),
    "GET /predict": (b"GET /predict HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    "PUT /predict": (b"PUT /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx", 405),
    "DELETE /": (b"DELETE / HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    "unknown method": (b"BREW / HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    "unknown page": (b"GET /admin HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    "unknown endpoint": (with_length("/upload", photo_bytes()), 404),
    "dot-dot path": (b"GET /../pyproject.toml HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    "encoded dot-dot": (b"GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    "package file": (b"GET /serve.py HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    "garbage request line": (b"HELLO\r\n\r\n", 400),
    "HTTP/2 request line": (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 400),
}


@pytest.mark.parametrize("kind", list(BAD_REQUESTS))
def test_a_bad_request_gets_a_4xx_with_one_json_line(port: int, kind: str) -> None:
    data, expected = BAD_REQUESTS[kind]
    status, body = raw(port, data)
    assert status == expected, body
    assert_json_error(body)
    assert request(port, "GET", "/health")[0] == 200  # still serving


def test_when_every_inference_slot_is_taken_the_answer_is_503(segmenter: Segmenter) -> None:
    limits = Limits(inferences=1, queue_wait_s=0.05)
    busy = make_server(segmenter, "127.0.0.1", 0, limits, quiet=True)
    with running(busy) as busy_port:
        assert busy.inference_slots.acquire(timeout=1)
        try:
            status, headers, body = request(busy_port, "POST", "/predict", photo_bytes())
            assert status == 503 and headers["Retry-After"] == "1"
            assert "busy" in assert_json_error(body)
        finally:
            busy.inference_slots.release()
        assert request(busy_port, "POST", "/predict", photo_bytes())[0] == 200


def test_connections_over_the_limit_get_503_and_the_server_recovers(
    segmenter: Segmenter,
) -> None:
    limits = Limits(connections=1, socket_timeout_s=3.0)
    with running(make_server(segmenter, "127.0.0.1", 0, limits, quiet=True)) as busy_port:
        idle = socket.create_connection(("127.0.0.1", busy_port))  # holds the only slot
        try:
            status, body = raw(busy_port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status == 503 and "busy" in assert_json_error(body)
        finally:
            idle.close()
        deadline = time.monotonic() + 30
        while request(busy_port, "GET", "/health")[0] != 200:  # the slot frees when idle ends
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_serve_listens_on_127_0_0_1_by_default_and_refuses_a_taken_port(
    segmenter: Segmenter, server: PetsegServer
) -> None:
    args = build_parser().parse_args(["serve", "--model_path", "m.pt"])
    assert (args.host, args.port) == ("127.0.0.1", 8000)
    taken = server.server_address[1]
    with pytest.raises(PetsegError, match=rf"cannot listen on 127\.0\.0\.1 port {taken}"):
        make_server(segmenter, "127.0.0.1", taken, quiet=True)


def test_serve_with_a_missing_model_is_one_line(tmp_path: Path, capsys) -> None:
    assert main(["serve", "--model_path", str(tmp_path / "nope.pt"), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "checkpoint not found" in err


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def served_process(tiny_checkpoint: Path) -> Iterator[tuple[subprocess.Popen, int]]:
    """`petseg serve` in its own process on a free port."""
    command = [sys.executable, "-m", "petseg", "serve", "--model_path", str(tiny_checkpoint)]
    process = subprocess.Popen(
        [*command, "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        line = process.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert found, line
        yield process, int(found.group(1))
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_200_requests_from_8_threads_a_fifth_malformed(
    served_process: tuple[subprocess.Popen, int], segmenter: Segmenter
) -> None:
    """Every good request gets its mask, every bad one a 4xx, the server lives on, its memory
    stays bounded, and SIGTERM stops it cleanly."""
    process, served_port = served_process
    photos = [photo_bytes(400, 300, seed=seed) for seed in range(4)]
    expected = [segmenter.predict(photo).png() for photo in photos]
    limited = ("too large", "too many pixels")  # this server has the default limits
    bad = [data for kind, (data, _) in BAD_REQUESTS.items() if kind not in limited]

    def one(index: int) -> tuple[bool, int, bool]:
        if index % 5 == 4:
            status, body = raw(served_port, bad[index % len(bad)])
            return False, status, bool(assert_json_error(body))
        status, _, body = request(served_port, "POST", "/predict", photos[index % 4])
        return True, status, body == expected[index % 4]

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(40)))  # warm-up: allocator pools, thread stacks
        before = rss_bytes(process.pid)
        results = list(pool.map(one, range(200)))
    grown = rss_bytes(process.pid) - before
    good = [(status, same) for is_good, status, same in results if is_good]
    malformed = [status for is_good, status, _ in results if not is_good]
    assert len(good) == 160 and all(status == 200 and same for status, same in good)
    assert len(malformed) == 40 and all(400 <= status < 500 for status in malformed)
    assert process.poll() is None and request(served_port, "GET", "/health")[0] == 200
    assert grown < 64 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over 200 requests"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert "stopped" in process.stdout.read()


def find_browser() -> tuple[str, str]:
    """Paths of a Chromium and its chromedriver, or a skip saying what is missing."""
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")
    browser = next(
        (found for name in ("chromium", "chromium-browser", "google-chrome")
         if (found := shutil.which(name))), None,
    )  # fmt: skip
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip(
            "no Chromium or chromedriver on PATH (Debian: apt-get install chromium chromium-driver)"
        )
    return browser, driver


def test_the_page_in_headless_chromium(port: int, tmp_path: Path) -> None:
    """Upload a photo through the file input; the mask, overlay and cut-out render at its size."""
    browser, driver_path = find_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo = tmp_path / "pet.jpg"
    photo.write_bytes(photo_bytes(320, 240))
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    profile = tempfile.mkdtemp(prefix="petseg-chromium-", dir=tmp_path)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 "--window-size=1280,720", f"--user-data-dir={profile}"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        WebDriverWait(driver, 30).until(lambda d: "unet" in d.find_element(By.ID, "model").text)
        driver.find_element(By.ID, "file").send_keys(str(photo))
        ids = ["photo", "mask", "overlay", "cutout"]
        sizes_js = f"return {ids}.map(id => [document.getElementById(id).naturalWidth, document.getElementById(id).naturalHeight])"
        WebDriverWait(driver, 60).until(lambda d: all(w > 0 for w, _ in d.execute_script(sizes_js)))
        assert driver.execute_script(sizes_js) == [[320, 240]] * 4
        status = driver.find_element(By.ID, "status").text
        assert re.search(r"pet\.jpg: mask, overlay and cut-out in \d+\.\d\d s", status), status
        links = [driver.find_element(By.ID, f"{name}-link") for name in ids[1:]]
        assert [link.get_attribute("download") for link in links] == [
            "pet.png", "pet_overlay.png", "pet_cutout.png"
        ]  # fmt: skip
        assert all(link.get_attribute("href").startswith("blob:") for link in links)
        screenshot = tmp_path / "serve-page.png"
        driver.save_screenshot(str(screenshot))
        print(f"screenshot of the page: {screenshot}")
        assert screenshot.stat().st_size > 0
    finally:
        driver.quit()
