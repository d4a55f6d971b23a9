"""Fetch the Oxford-IIIT Pet archives, check their MD5 and extract them safely.

Only the archives whose contents are missing under the data folder are handled (see
`missing_archives`), so running the download again is cheap and needs no network. An archive
already lying in the data folder (downloaded by hand, or left by an interrupted run) is used
when its MD5 is right. Downloads go to ``NAME.tar.gz.part`` first and are renamed only once
verified, so a half-written file is never mistaken for a complete one.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import urllib.response
import zlib
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from petseg.data.oxford_pet import missing_archives
from petseg.errors import PetsegError

OFFICIAL_BASE_URL = "https://www.robots.ox.ac.uk/~vgg/data/pets/data"
ARCHIVE_MD5: dict[str, str] = {
    "images": "5c4f3ee8e5d25df40f4fd59a7f44e54c",
    "annotations": "95a8c909bbe2e81eed6a22bccdf3f68f",
}

CHUNK_SIZE = 1 << 20

logger = logging.getLogger(__name__)

# What urlopen returns: an HTTPResponse for http(s), an addinfourl for file:// mirrors.
Response = http.client.HTTPResponse | urllib.response.addinfourl


def archive_url(base: str, name: str) -> str:
    """URL of archive `name` under `base` (a mirror may be given with a trailing slash)."""
    return f"{base.rstrip('/')}/{name}.tar.gz"


def download_dataset(
    root: Path,
    mirror: str | None = None,
    *,
    md5s: Mapping[str, str] = ARCHIVE_MD5,
    progress: bool = True,
    timeout: float = 30.0,
) -> list[str]:
    """Fetch, verify and extract the archives whose contents are missing under root.

    Returns the names of the archives handled, [] when nothing was needed (then without any
    network access). `mirror` replaces OFFICIAL_BASE_URL; `md5s` maps archive names to the
    expected MD5. Raises PetsegError with a one-line message on any network, checksum,
    extraction or disk problem, leaving neither .part files nor half-extracted folders.
    """
    root = Path(root)
    needed = missing_archives(root)
    if not needed:
        return []
    if not hasattr(tarfile, "data_filter"):
        # Checked up front so that no 750 MB download is wasted on a Python that cannot extract it.
        raise PetsegError(
            f"{root}: this Python lacks tarfile's safe extraction filter; "
            f"upgrade to Python 3.10.12 / 3.11.4 or newer and run again"
        )
    # Look the checksums up before touching the network: a missing one is a programming error.
    expected = {name: md5s[name].lower() for name in needed}
    _prepare_root(root)
    base = mirror or OFFICIAL_BASE_URL
    for name in needed:
        archive = root / f"{name}.tar.gz"
        if not _usable_local_archive(archive, expected[name]):
            url = archive_url(base, name)
            _download_verified(
                url, archive, expected[name], root=root, progress=progress, timeout=timeout
            )
        _extract(archive, name, root)
        if name in missing_archives(root):
            raise PetsegError(
                f"{archive}: extracted, but the dataset is still incomplete; "
                f"delete it and run again to download it afresh"
            )
        archive.unlink()
    return needed


def _prepare_root(root: Path) -> None:
    """Create the data folder, failing with a clear message when it cannot hold the dataset."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise PetsegError(
            f"{root}: exists but is not a folder; choose another data folder"
        ) from None
    except OSError as error:
        raise PetsegError(
            f"{root}: cannot create the data folder ({error.strerror or error}); choose another data folder"
        ) from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise PetsegError(
            f"{root}: the data folder is not writable; fix its permissions or choose another one"
        )


def file_md5(path: Path) -> str:
    """Hex MD5 of a file, read in chunks so a 750 MB archive does not need 750 MB of memory."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def _usable_local_archive(archive: Path, expected_md5: str) -> bool:
    """Whether `archive` already exists with the right MD5 (a wrong one is reported, then replaced)."""
    if not archive.is_file():
        return False
    try:
        actual = file_md5(archive)
    except OSError as error:
        raise PetsegError(
            f"{archive}: cannot read ({error.strerror or error}); delete it and run again"
        ) from None
    if actual == expected_md5:
        return True
    # Logged rather than printed: the caller owns the terminal and decides what to show.
    logger.warning(
        "%s: MD5 %s differs from the expected %s; downloading it again",
        archive,
        actual,
        expected_md5,
    )
    return False


def _download_verified(
    url: str, archive: Path, expected_md5: str, *, root: Path, progress: bool, timeout: float
) -> None:
    """Download `url` to `archive` via a .part file that is renamed only once its MD5 matches."""
    part = archive.with_name(archive.name + ".part")
    try:
        actual = _stream_to_file(
            url,
            part,
            desc=archive.name.removesuffix(".tar.gz"),
            root=root,
            progress=progress,
            timeout=timeout,
        )
        if actual != expected_md5:
            raise PetsegError(
                f"{url}: checksum mismatch (MD5 expected {expected_md5}, got {actual}); "
                f"the download is corrupt or the mirror serves another file, run again or pass another --mirror URL"
            )
        os.replace(part, archive)
    except BaseException:
        # Also on Ctrl-C: a stale .part file would only waste disk space.
        part.unlink(missing_ok=True)
        raise


def _network_error(url: str, reason: object, root: Path) -> PetsegError:
    reason_text = " ".join(str(reason).split()) or type(reason).__name__
    return PetsegError(
        f"cannot download {url} ({reason_text}); check the network or pass --mirror URL; "
        "with a copy of the dataset already extracted, point --data_path at its folder (the "
        f"one holding images/ and annotations/); or put images.tar.gz and annotations.tar.gz "
        f"into {root} and run again"
    )


def _describe(error: BaseException, timeout: float) -> object:
    """Short reason for a network failure, as shown in the message."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        error_reason = error.reason
        if isinstance(error_reason, TimeoutError):
            return f"no answer within {timeout:g} s"
        return (
            error_reason.strerror
            if isinstance(error_reason, OSError) and error_reason.strerror
            else error_reason
        )
    if isinstance(error, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(error, http.client.IncompleteRead):
        return f"connection closed after {len(error.partial)} bytes"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return error


# What urlopen and reading its response raise when the network or the server lets us down;
# socket errors, TimeoutError and ConnectionError are all OSError subclasses.
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, OSError)


def _open_url(url: str, *, root: Path, timeout: float) -> Response:
    try:
        return urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as error:
        error.close()  # it holds the error page's open connection
        raise _network_error(url, _describe(error, timeout), root) from None
    except _NETWORK_ERRORS as error:
        raise _network_error(url, _describe(error, timeout), root) from None
    except ValueError as error:
        # urllib's answer to a URL without a usable scheme, e.g. a mirror given as "example.org/pets".
        raise PetsegError(
            f"{url}: not a valid URL ({error}); pass --mirror as http(s)://HOST/PATH"
        ) from None


def _read_chunk(response: Response, url: str, *, root: Path, timeout: float) -> bytes:
    try:
        return response.read(CHUNK_SIZE)
    except _NETWORK_ERRORS as error:
        raise _network_error(url, _describe(error, timeout), root) from None


def _content_length(response: Response) -> int | None:
    value = response.headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _stream_to_file(
    url: str, part: Path, *, desc: str, root: Path, progress: bool, timeout: float
) -> str:
    """Stream `url` into `part` with a progress bar; return the MD5 of what was received."""
    digest = hashlib.md5(usedforsecurity=False)
    received = 0
    with _open_url(url, root=root, timeout=timeout) as response:
        total = _content_length(response)
        try:
            with (
                part.open("wb") as out,
                tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=desc,
                    disable=not progress,
                ) as bar,
            ):
                # _read_chunk turns network errors into PetsegError, so OSError below is the disk's.
                while chunk := _read_chunk(response, url, root=root, timeout=timeout):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        except OSError as error:
            raise PetsegError(
                f"{part}: cannot write the download ({error.strerror or error}); free some disk space and run again"
            ) from None
    # http.client returns a short body without complaint when the connection drops early.
    if total is not None and received < total:
        raise _network_error(url, f"connection closed after {received} of {total} bytes", root)
    return digest.hexdigest()


def _strict_data_filter(member: tarfile.TarInfo, dest_path: str) -> tarfile.TarInfo | None:
    """Python's "data" filter, except that absolute names are refused instead of made relative.

    A genuine archive never holds an absolute name, so one is a sign of a tampered file.
    """
    if PurePosixPath(member.name).is_absolute() or Path(member.name).is_absolute():
        raise tarfile.AbsolutePathError(member)
    return tarfile.data_filter(member, dest_path)


def _extract(archive: Path, name: str, root: Path) -> None:
    """Extract `archive` into a temporary folder in `root`, then move its `name/` folder into root."""
    try:
        # Inside root so that the final move is a rename on the same filesystem.
        staging = Path(tempfile.mkdtemp(prefix=f".extract-{name}-", dir=root))
    except OSError as error:
        raise PetsegError(
            f"{root}: cannot create a temporary folder ({error.strerror or error}); check its permissions"
        ) from None
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(staging, filter=_strict_data_filter)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
            # BadGzipFile is an OSError, so it must be caught before the disk errors below.
            reason = " ".join(str(error).split()) or type(error).__name__
            raise PetsegError(
                f"{archive}: cannot extract ({type(error).__name__}: {reason}); "
                f"the archive is damaged or unsafe, delete it and run again"
            ) from None
        except OSError as error:
            raise PetsegError(
                f"{archive}: cannot extract into {root} ({error.strerror or error}); free some disk space and run again"
            ) from None
        top = staging / name
        if not top.is_dir() or top.is_symlink():
            raise PetsegError(
                f"{archive}: has no top-level {name}/ folder, so it is not the Oxford-IIIT Pet {name} archive; "
                f"delete it and run again"
            )
        _merge_into(top, root / name)
    finally:
        # Whatever happened, leave no half-extracted dataset behind.
        shutil.rmtree(staging, ignore_errors=True)


def _merge_into(source: Path, dest: Path) -> None:
    """Move folder `source` to `dest`; if `dest` exists, move in only the entries it lacks.

    What the user already has under `dest` is never deleted or overwritten.
    """
    if not dest.exists() and not dest.is_symlink():
        _move(source, dest)
        return
    if not dest.is_dir():
        raise PetsegError(f"{dest}: exists but is not a folder; move it away and run again")
    for entry in sorted(source.iterdir()):
        target = dest / entry.name
        if not target.exists() and not target.is_symlink():
            _move(entry, target)
        elif entry.is_dir() and not entry.is_symlink() and target.is_dir():
            _merge_into(entry, target)
        # Otherwise the user's own entry wins and the archive's copy is dropped with the temp folder.


def _move(source: Path, dest: Path) -> None:
    try:
        # shutil.move renames, or copies when `dest` is on another filesystem (a symlinked folder).
        shutil.move(source, dest)
    except OSError as error:
        raise PetsegError(
            f"{dest}: cannot move the extracted files here ({error.strerror or error}); free some disk space and run again"
        ) from None
