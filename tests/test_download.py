"""download_dataset against tiny archives served from a local HTTP server (127.0.0.1 only)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import logging
import socket
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from petseg.data.download import archive_url, download_dataset
from petseg.data.oxford_pet import missing_archives
from petseg.errors import PetsegError

NAMES = ("Abyssinian_1", "Abyssinian_2", "beagle_1")


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def _trimap_png() -> bytes:
    trimap = np.full((8, 8), 2, dtype=np.uint8)
    trimap[2:6, 2:6] = 1
    trimap[1, 1:7] = 3
    buffer = io.BytesIO()
    Image.fromarray(trimap, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def _write_tar(path: Path, members: dict[str, bytes]) -> str:
    """Write a .tar.gz holding `members` (name -> content) and return its MD5."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.md5(path.read_bytes()).hexdigest()


def _image_members() -> dict[str, bytes]:
    return {f"images/{name}.jpg": _jpeg(index) for index, name in enumerate(NAMES)}


def _annotation_members() -> dict[str, bytes]:
    listing = "".join(f"{name} 1 1 1\n" for name in NAMES).encode()
    members = {"annotations/trainval.txt": listing, "annotations/test.txt": listing}
    members.update({f"annotations/trimaps/{name}.png": _trimap_png() for name in NAMES})
    return members


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files from a folder and records each requested path on the server."""

    def do_GET(self) -> None:
        self.server.requested.append(self.path)  # type: ignore[attr-defined]
        if self.path.startswith("/short/"):
            self._send_short_body()
        else:
            super().do_GET()

    def _send_short_body(self) -> None:
        """Promise more bytes than are sent, as a connection dropped mid-download does."""
        body = b"x" * 1000
        self.send_response(200)
        self.send_header("Content-Length", str(len(body) + 5000))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass


@dataclass
class Mirror:
    url: str
    folder: Path
    requested: list[str] = field(default_factory=list)


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    folder = tmp_path / "mirror"
    folder.mkdir()
    handler = functools.partial(_CountingHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.requested = []  # type: ignore[attr-defined]
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
    )
    thread.start()
    try:
        yield Mirror(f"http://127.0.0.1:{server.server_port}/", folder, server.requested)  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def md5s(mirror: Mirror) -> dict[str, str]:
    """Genuine-looking archives on the mirror, with their MD5s."""
    return {
        "images": _write_tar(mirror.folder / "images.tar.gz", _image_members()),
        "annotations": _write_tar(mirror.folder / "annotations.tar.gz", _annotation_members()),
    }


def _leftovers(root: Path) -> list[str]:
    patterns = ("*.part", "*.tar.gz", ".extract-*")
    return sorted(path.name for pattern in patterns for path in root.glob(pattern))


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_archive_url_strips_trailing_slash() -> None:
    assert archive_url("http://host/pets/", "images") == "http://host/pets/images.tar.gz"
    assert archive_url("http://host/pets", "annotations") == "http://host/pets/annotations.tar.gz"


def test_download_extracts_official_layout(
    tmp_path: Path, mirror: Mirror, md5s: dict[str, str]
) -> None:
    root = tmp_path / "data" / "oxford-iiit-pet"  # created by the download

    fetched = download_dataset(root, mirror.url, md5s=md5s, progress=False, timeout=5)

    assert fetched == ["images", "annotations"]
    assert missing_archives(root) == []
    assert sorted(mirror.requested) == ["/annotations.tar.gz", "/images.tar.gz"]
    for index, name in enumerate(NAMES):
        assert (root / "images" / f"{name}.jpg").read_bytes() == _jpeg(index)
        assert (root / "annotations" / "trimaps" / f"{name}.png").read_bytes() == _trimap_png()
    assert (root / "annotations" / "test.txt").read_text().splitlines()[0] == "Abyssinian_1 1 1 1"
    assert _leftovers(root) == []
    assert sorted(path.name for path in root.iterdir()) == ["annotations", "images"]


def test_second_run_needs_no_network(tmp_path: Path, mirror: Mirror, md5s: dict[str, str]) -> None:
    root = tmp_path / "data"
    download_dataset(root, mirror.url, md5s=md5s, progress=False, timeout=5)
    mirror.requested.clear()

    assert download_dataset(root, mirror.url, md5s=md5s, progress=False, timeout=5) == []
    assert mirror.requested == []


def test_wrong_checksum_is_refused(tmp_path: Path, mirror: Mirror, md5s: dict[str, str]) -> None:
    root = tmp_path / "data"
    wrong = dict(md5s, images="0" * 32)

    with pytest.raises(PetsegError, match="MD5") as caught:
        download_dataset(root, mirror.url, md5s=wrong, progress=False, timeout=5)

    message = str(caught.value)
    assert "\n" not in message
    assert archive_url(mirror.url, "images") in message
    assert "0" * 32 in message and md5s["images"] in message
    assert not (root / "images").exists()
    assert _leftovers(root) == []


def test_unreachable_server_suggests_network_or_mirror(tmp_path: Path) -> None:
    root = tmp_path / "data"
    url = f"http://127.0.0.1:{_closed_port()}/pets"

    with pytest.raises(PetsegError, match=r"check the network or pass --mirror URL") as caught:
        download_dataset(root, url, progress=False, timeout=2)

    message = str(caught.value)
    assert "\n" not in message
    assert "point --data_path at its folder (the one holding images/ and annotations/)" in message
    assert f"{url}/images.tar.gz" in message
    assert str(root) in message
    assert _leftovers(root) == []


def test_http_404_names_the_url(tmp_path: Path, mirror: Mirror, md5s: dict[str, str]) -> None:
    root = tmp_path / "data"
    (mirror.folder / "empty").mkdir()
    url = f"{mirror.url}empty"

    with pytest.raises(PetsegError, match="404") as caught:
        download_dataset(root, url, md5s=md5s, progress=False, timeout=5)

    assert f"{url}/images.tar.gz" in str(caught.value)
    assert mirror.requested == ["/empty/images.tar.gz"]
    assert _leftovers(root) == []


def test_archives_placed_by_hand_are_used_offline(
    tmp_path: Path, mirror: Mirror, md5s: dict[str, str]
) -> None:
    root = tmp_path / "data"
    root.mkdir()
    for name in ("images", "annotations"):
        (root / f"{name}.tar.gz").write_bytes((mirror.folder / f"{name}.tar.gz").read_bytes())

    assert download_dataset(root, mirror.url, md5s=md5s, progress=False, timeout=5) == [
        "images",
        "annotations",
    ]

    assert mirror.requested == []
    assert missing_archives(root) == []
    assert _leftovers(root) == []


def test_corrupt_archive_placed_by_hand_is_downloaded_again(
    tmp_path: Path, mirror: Mirror, md5s: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "images.tar.gz").write_bytes(b"truncated")

    with caplog.at_level(logging.WARNING, logger="petseg.data.download"):
        download_dataset(root, mirror.url, md5s=md5s, progress=False, timeout=5)

    assert "images.tar.gz" in caplog.text and md5s["images"] in caplog.text

    assert sorted(mirror.requested) == ["/annotations.tar.gz", "/images.tar.gz"]
    assert missing_archives(root) == []
    assert _leftovers(root) == []


@pytest.mark.parametrize("evil_kind", ["parent", "absolute"])
def test_path_traversal_is_refused(tmp_path: Path, mirror: Mirror, evil_kind: str) -> None:
    root = tmp_path / "data"
    outside = tmp_path / "evil.txt"
    evil_name = "../evil.txt" if evil_kind == "parent" else str(outside)
    members = {**_image_members(), evil_name: b"pwned"}
    md5s = {"images": _write_tar(mirror.folder / "images.tar.gz", members), "annotations": "0" * 32}

    with pytest.raises(PetsegError, match=r"images\.tar\.gz") as caught:
        download_dataset(root, mirror.url, md5s=md5s, progress=False, timeout=5)

    assert "\n" not in str(caught.value)
    assert not outside.exists()
    assert not (root / "images").exists()
    assert not (root / outside.relative_to("/")).exists()
    assert not list(root.glob(".extract-*"))
    assert not list(root.glob("*.part"))


def test_connection_dropped_mid_download(tmp_path: Path, mirror: Mirror) -> None:
    root = tmp_path / "data"
    url = f"{mirror.url}short"

    with pytest.raises(PetsegError, match=r"connection closed after 1000 of 6000 bytes") as caught:
        download_dataset(root, url, progress=False, timeout=5)

    assert f"{url}/images.tar.gz" in str(caught.value)
    assert "check the network" in str(caught.value)
    assert _leftovers(root) == []


def test_truncated_archive_is_refused(tmp_path: Path, mirror: Mirror) -> None:
    root = tmp_path / "data"
    whole = mirror.folder / "whole.tar.gz"
    _write_tar(whole, _image_members())
    truncated = whole.read_bytes()[: whole.stat().st_size // 2]
    (mirror.folder / "images.tar.gz").write_bytes(truncated)
    md5s = {"images": hashlib.md5(truncated).hexdigest(), "annotations": "0" * 32}

    with pytest.raises(PetsegError, match=r"images\.tar\.gz: cannot extract"):
        download_dataset(root, mirror.url, md5s=md5s, progress=False, timeout=5)

    assert not (root / "images").exists()
    assert not list(root.glob(".extract-*"))


def test_archive_without_expected_folder_is_refused(tmp_path: Path, mirror: Mirror) -> None:
    root = tmp_path / "data"
    md5 = _write_tar(mirror.folder / "images.tar.gz", {"photos/Abyssinian_1.jpg": _jpeg(0)})

    with pytest.raises(PetsegError, match=r"no top-level images/ folder"):
        download_dataset(
            root, mirror.url, md5s={"images": md5, "annotations": "0" * 32}, progress=False
        )

    assert not (root / "images").exists()
    assert not (root / "photos").exists()
    assert not list(root.glob(".extract-*"))


def test_only_missing_archive_is_downloaded(
    tmp_path: Path, mirror: Mirror, md5s: dict[str, str]
) -> None:
    root = tmp_path / "data"
    annotations = root / "annotations"
    (annotations / "trimaps").mkdir(parents=True)
    user_files = {
        annotations / "trainval.txt": b"my_cat 1 1 1\n",
        annotations / "test.txt": b"my_dog 2 2 1\n",
        annotations / "trimaps" / "my_cat.png": b"user trimap",
    }
    for path, data in user_files.items():
        path.write_bytes(data)

    assert download_dataset(root, mirror.url, md5s=md5s, progress=False, timeout=5) == ["images"]

    assert mirror.requested == ["/images.tar.gz"]
    assert missing_archives(root) == []
    assert {path: path.read_bytes() for path in user_files} == user_files
    assert sorted(path.name for path in (annotations / "trimaps").iterdir()) == ["my_cat.png"]
    assert _leftovers(root) == []


def test_partial_annotations_are_completed_without_overwriting(
    tmp_path: Path, mirror: Mirror, md5s: dict[str, str]
) -> None:
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    own_list = b"my_cat 1 1 1\n"
    (root / "annotations" / "trainval.txt").write_bytes(own_list)

    assert download_dataset(root, mirror.url, md5s=md5s, progress=False, timeout=5) == [
        "annotations"
    ]

    assert mirror.requested == ["/annotations.tar.gz"]
    assert (root / "annotations" / "trainval.txt").read_bytes() == own_list
    assert (root / "annotations" / "test.txt").is_file()
    assert len(list((root / "annotations" / "trimaps").glob("*.png"))) == len(NAMES)
    assert _leftovers(root) == []


def test_root_that_is_a_file_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.write_text("not a folder")

    with pytest.raises(PetsegError, match="not a folder"):
        download_dataset(root, "http://127.0.0.1:9/", progress=False, timeout=1)
