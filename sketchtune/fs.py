"""Where sweeps live: a local folder or any URI `pyarrow.fs` understands, behind a few operations.

A location is a `Path` (local, today's behaviour: writes go through a temporary file and
`os.replace`) or a `URI` such as `s3://bucket/sweeps` (any scheme `pyarrow.fs.FileSystem.from_uri`
opens: s3, gs, abfs, hdfs). An object store has no rename: each object is written to its final
key (a PUT is all or nothing: a reader sees the old object, the new one, or none), and a set of
objects is committed by writing its marker (a fold's manifest, ensemble.json) last, after the
objects it vouches for; readers trust only what a marker vouches for.

Credentials and endpoints come the standard way: the `AWS_*` environment variables (pyarrow
>= 15 reads `AWS_ENDPOINT_URL`, checked against pyarrow 25 in tests/test_s3.py), config files,
instance roles; or options in the URI's query (`s3://b/k?endpoint_override=host:9000&scheme=http`),
which every location joined under it keeps.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .errors import StoreError

__all__ = ["CLOUD_ENV", "SCHEMES", "URI", "Location", "atomic_write_bytes", "replace_file",
           "check_writable",
           "delete", "is_dir", "is_file", "is_uri", "list_dir", "location", "open_input",
           "open_new_file", "read_bytes", "write_bytes"]

# Environment variables that carry cloud credentials and endpoints: forwarded to Ray's workers
# (on a cluster they are children of `ray start`, not of the driver) when the driver has them.
CLOUD_ENV = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_CA_BUNDLE",
    "GOOGLE_APPLICATION_CREDENTIALS", "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY",
)


# The schemes `pyarrow.fs.FileSystem.from_uri` opens besides `file:` (pyarrow 15-25). Any other
# (`ftp://`, `http://`) would pass the config and fail at the first read with pyarrow's
# "Unrecognized filesystem type": refused where the location is given instead.
SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")

# `scheme:` at the start of a location: a URI, or a typo of one (`s3:/bucket`, `gs:bucket`).
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")



class URI:
    """A cloud location `scheme://bucket/key[?options]`: joins and names like a `PurePath`.

    The query (pyarrow's filesystem options, e.g. `endpoint_override`) stays on every location
    joined under it, so a child opens the same filesystem as its parent.
    """

    __slots__ = ("scheme", "netloc", "key", "query")

    def __init__(self, text: str) -> None:
        parts = urlsplit(str(text))
        if not (parts.scheme and parts.netloc):
            raise ValueError(f"{text!r} is not a storage URI (scheme://bucket/path)")
        if parts.scheme.lower() not in SCHEMES:
            raise ValueError(f"{text!r}: pyarrow.fs cannot open {parts.scheme!r} storage; use a "
                             f"local folder or one of {', '.join(s + '://' for s in SCHEMES)}")
        self.scheme, self.netloc, self.query = parts.scheme, parts.netloc, parts.query
        self.key = parts.path.strip("/")

    def _with_key(self, key: str) -> URI:
        out = object.__new__(URI)
        out.scheme, out.netloc, out.query, out.key = self.scheme, self.netloc, self.query, key
        return out

    def __truediv__(self, name: str | os.PathLike[str]) -> URI:
        tail = str(PurePosixPath(str(name)))
        if tail.startswith("/") or ".." in PurePosixPath(tail).parts:
            raise ValueError(f"{self}: cannot join {name!r} (absolute or '..')")
        return self._with_key(f"{self.key}/{tail}".strip("/"))

    @property
    def name(self) -> str:
        return PurePosixPath(self.key).name

    @property
    def parent(self) -> URI:
        return self._with_key(str(PurePosixPath(self.key).parent).strip(".").strip("/"))

    @property
    def bucket(self) -> URI:
        return self._with_key("")

    def __str__(self) -> str:
        base = f"{self.scheme}://{self.netloc}" + (f"/{self.key}" if self.key else "")
        return f"{base}?{self.query}" if self.query else base

    def __repr__(self) -> str:
        return f"URI({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, URI) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))


Location = Path | URI


def is_uri(value: Any) -> bool:
    """Whether `value` names a cloud location (`scheme://...`) rather than a local path."""
    return isinstance(value, URI) or (isinstance(value, str) and "://" in value
                                      and not value.startswith("file://"))


def location(value: str | os.PathLike[str] | URI) -> Location:
    """`value` as a location: a URI for `scheme://...`, else a Path (`file:///abs` is local).

    ValueError for text that looks like a URI but is not one a user meant as a folder: a
    scheme pyarrow cannot open (`ftp://h/x`), a URI missing a slash (`s3:/bucket` would be a
    local folder named `s3:`), a `file:` URI with a host or a relative path (`file://rel/x`
    is the absolute `/x` on host `rel`).
    """
    if isinstance(value, (URI, Path)):
        return value
    text = os.fspath(value)
    if text.startswith("file:"):
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError(f"{text!r}: a file: URI names an absolute local path "
                             "(file:///abs/path); write a relative folder as the path itself")
        return Path(parts.path)
    if is_uri(text):
        return URI(text)
    m = _SCHEME.match(text)
    if m and (m.group(1).lower() in SCHEMES or text[m.end():].startswith("/")):
        raise ValueError(f"{text!r} looks like a storage URI without its '//' "
                         f"({m.group(1)}://bucket/path); for a local folder of that name write "
                         f"./{text}")
    return Path(text)


@functools.lru_cache(maxsize=16)
def _filesystem(scheme: str, netloc: str, query: str) -> tuple[Any, str]:
    """(pyarrow filesystem, the path of the URI's root in it), one per bucket and options.

    Cached for the process: a filesystem reads its credentials and endpoint once, when made
    (tests that change the AWS_* variables call `_filesystem.cache_clear()`)."""
    from pyarrow import fs as pafs

    return pafs.FileSystem.from_uri(f"{scheme}://{netloc}" + (f"?{query}" if query else ""))


def _resolve(uri: URI) -> tuple[Any, str]:
    try:
        fs, root = _filesystem(uri.scheme, uri.netloc, uri.query)
    # ArrowInvalid (a ValueError): an option pyarrow does not know in the query; OSError: the
    # bucket's region could not be resolved (no network, no such bucket on AWS).
    except (ValueError, OSError) as err:
        raise StoreError(f"{uri}: pyarrow.fs cannot open it ({_why(err)}); check the URI, the "
                         "network and the endpoint (AWS_ENDPOINT_URL)") from None
    root = root.rstrip("/")
    return fs, f"{root}/{uri.key}" if uri.key else root


# ---------------------------------------------------------------------- reading
@contextlib.contextmanager
def _reading(loc: URI) -> Iterator[None]:
    """A cloud read that fails (endpoint down, credentials refused) as one StoreError line
    naming `loc`, not pyarrow's OSError naming only the bucket and key; FileNotFoundError
    passes: readers treat a missing object as missing."""
    try:
        yield
    except FileNotFoundError:
        raise
    except OSError as err:
        raise StoreError(f"{loc}: cannot read ({_why(err)}); check the bucket, the credentials "
                         "(AWS_ACCESS_KEY_ID, ...) and the endpoint (AWS_ENDPOINT_URL)") from None


def read_bytes(loc: Location) -> bytes:
    """The whole file; FileNotFoundError when it is not there (local and cloud alike)."""
    if isinstance(loc, Path):
        return loc.read_bytes()
    with _reading(loc), open_input(loc) as f:
        return f.read()


def open_input(loc: Location) -> Any:
    """A seekable binary file (np.load reads an npz member without the rest)."""
    if isinstance(loc, Path):
        return open(loc, "rb")  # noqa: SIM115 - the caller closes it
    fs, path = _resolve(loc)
    from pyarrow import fs as pafs

    with _reading(loc):
        if fs.get_file_info(path).type != pafs.FileType.File:
            raise FileNotFoundError(2, "No such file", str(loc))
        return fs.open_input_file(path)


def is_file(loc: Location) -> bool:
    if isinstance(loc, Path):
        return loc.is_file()
    from pyarrow import fs as pafs

    fs, path = _resolve(loc)
    with _reading(loc):
        return fs.get_file_info(path).type == pafs.FileType.File


def is_dir(loc: Location) -> bool:
    """A folder; on an object store, a prefix that holds at least one object."""
    if isinstance(loc, Path):
        return loc.is_dir()
    from pyarrow import fs as pafs

    fs, path = _resolve(loc)
    with _reading(loc):
        return fs.get_file_info(path).type == pafs.FileType.Directory


def list_dir(loc: Location) -> dict[str, int | None]:
    """The entries directly under `loc`: name -> size in bytes (None for a folder); {} if none."""
    if isinstance(loc, Path):
        try:
            with os.scandir(loc) as it:
                return {e.name: None if e.is_dir() else e.stat().st_size for e in it}
        except (FileNotFoundError, NotADirectoryError):
            return {}
    from pyarrow import fs as pafs

    fs, path = _resolve(loc)
    with _reading(loc):
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True,
                                                   recursive=False))
    return {PurePosixPath(i.path).name: None if i.type == pafs.FileType.Directory else i.size
            for i in infos}


# ---------------------------------------------------------------------- writing
def open_new_file(folder: Path, prefix: str) -> tuple[int, Path]:
    """A new, uniquely named file in `folder`, opened for writing: (fd, path).

    Unlike `tempfile.mkstemp` (always 0600) it is created with 0666 less the umask, the
    mode a plain `open()` gives, so a team sharing the folder can read what lands there.
    """
    while True:
        path = folder / f"{prefix}{secrets.token_hex(6)}.tmp"
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path
        except FileExistsError:  # a clash of 48 random bits: draw again
            continue


def replace_file(path: Path, data: bytes) -> None:
    """`path` := data through a temporary file beside it, fsynced, and a rename (POSIX-atomic),
    with the umask's mode. OSError as the OS raised it; the temporary file never stays."""
    fd, tmp = open_new_file(path.parent, f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """`replace_file`, its folder made first; a full disk or a read-only folder is a StoreError
    naming the path, and no half-written file is left where a later run would trust it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(path, data)
    except OSError as err:
        raise StoreError(f"{path}: cannot write ({err.strerror or err}); free some space or "
                         "make it writable, then run again: nothing was half-written") from None


def write_bytes(loc: Location, data: bytes) -> None:
    """`loc` := data, all or nothing: locally a temporary file and a rename; on an object
    store one PUT to the final key (the object appears whole when the upload completes, never
    in part). StoreError naming `loc` on failure."""
    if isinstance(loc, Path):
        atomic_write_bytes(loc, data)
        return
    try:
        fs, path = _resolve(loc)
        with fs.open_output_stream(path) as f:
            f.write(data)
    except OSError as err:
        raise StoreError(f"{loc}: cannot write ({_why(err)}); check the bucket, its "
                         "credentials and endpoint (AWS_ENDPOINT_URL), then run again") from None


def delete(loc: Location) -> None:
    """Remove the file at `loc`; nothing when it is not there."""
    try:
        if isinstance(loc, Path):
            loc.unlink()
        else:
            fs, path = _resolve(loc)
            fs.delete_file(path)
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError as err:
        raise StoreError(f"{loc}: cannot delete ({_why(err)}); make it writable, then run "
                         "again") from None


def _why(err: BaseException) -> str:
    """pyarrow's OSError text on one line, without the request id that follows it."""
    text = (getattr(err, "strerror", None) or str(err) or type(err).__name__).strip()
    return text.splitlines()[0].split(" (Request ID")[0]


def check_writable(loc: Location, field: str) -> None:
    """Pre-flight for a cloud location: its bucket exists and takes a write and a delete.

    One StoreError line naming the URI and `field` for a missing bucket, missing or wrong
    credentials, an unreachable endpoint. Local folders are checked by `preflight.check_folder`.
    """
    if isinstance(loc, Path):
        return
    from pyarrow import fs as pafs

    try:
        fs, path = _resolve(loc)
    except StoreError as err:
        raise StoreError(f"{field}: {err}") from None
    try:
        bucket = path.split("/", 1)[0]
        if loc.scheme in ("s3", "gs", "gcs") and \
                fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise StoreError(f"{field}: {loc}: bucket {bucket!r} does not exist (create it, or "
                             "check the endpoint: AWS_ENDPOINT_URL)")
        probe = f"{path}/.sketchtune-probe-{secrets.token_hex(4)}".lstrip("/")
        with fs.open_output_stream(probe) as f:
            f.write(b"probe")
        fs.delete_file(probe)
    except StoreError:
        raise
    except (OSError, ValueError) as err:
        if none := _no_credentials(loc):  # pyarrow then says only "AWS Error UNKNOWN"
            raise StoreError(f"{field}: {loc}: cannot write there: {none} ({_why(err)})") from None
        raise StoreError(f"{field}: {loc}: cannot write there ({_why(err)}); check the bucket, "
                         "the credentials (AWS_ACCESS_KEY_ID, ...) and the endpoint "
                         "(AWS_ENDPOINT_URL)") from None


def _no_credentials(loc: URI) -> str | None:
    """For s3: where the AWS SDK reads credentials from, when none of those places has any.

    The environment, then the shared credentials and config files (a profile); an instance role
    cannot be seen from here, so it is not named.
    """
    env = os.environ
    if loc.scheme != "s3" or "access_key=" in loc.query or any(env.get(k) for k in (
            "AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI")):
        return None
    files = [Path(env.get(k) or default).expanduser() for k, default in (
        ("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"),
        ("AWS_CONFIG_FILE", "~/.aws/config"))]
    if any(f.is_file() for f in files):
        return None
    endpoint = (dict(parse_qsl(loc.query)).get("endpoint_override")
                or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or "AWS's own")
    return (f"no credentials were found (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are unset, "
            f"no AWS_PROFILE, no {files[0]} or {files[1]}); set them for the endpoint "
            f"{endpoint}")
