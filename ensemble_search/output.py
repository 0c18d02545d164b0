"""An output folder written as a whole set: every new file appears, or none does.

`optimize` and `predict` share `<sweep>/ensemble/`. Writing their files one by one leaves
a mix of old and new files when the disk fills half way. Instead the new set is staged in
a folder beside the target, together with hard links (copies where links are refused) of
the files already there that this set does not replace (the other command's), and the
staged folder is renamed into place. A failure before the swap leaves the target as it
was; readers never see a mix. (The swap is two renames: a crash between them leaves no
target folder, the previous set under `.<name>.old-*` and the new one under `.<name>.new-*`
beside it, never a mix.)

On an object store (`write_object_set`) there is no rename: each file is written whole to its
final key and the set's marker (ensemble.json for `optimize`, submission.csv for `predict`)
last, so a reader that finds the marker finds the files it goes with; a failure part way
leaves the previous marker, whose own files may then be partly replaced (say so, once).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from sketchtune import fs
from sketchtune.errors import StoreError
from sketchtune.fs import URI

__all__ = ["write_file_set", "write_object_set"]

_log = logging.getLogger(__name__)

# The file of each set that readers look for: written last.
MARKERS = ("ensemble.json", "submission.csv")


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # same file system (a sibling folder): no bytes copied
    except OSError:  # a file system without hard links
        shutil.copy2(src, dst)


def _new_sibling(target: Path, tag: str) -> Path:
    """A new, empty folder beside `target`, created with the umask's mode (not 0700)."""
    while True:
        path = target.with_name(f".{target.name}.{tag}-{secrets.token_hex(4)}")
        try:
            os.mkdir(path, 0o777)
            return path
        except FileExistsError:
            continue


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on `folder` so two commands do not swap the same target at once.

    A file system without locks (some NFS set-ups) runs unlocked rather than failing.
    """
    fd = os.open(folder, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _check_target(target: Path, names: list[str]) -> list[Path]:
    """The entries of `target` to carry over; StoreError when something is in the way."""
    if target.exists() and not target.is_dir():
        raise StoreError(f"{target}: a file is in the way of the output folder; move it "
                         "or pass --out DIR")
    if not target.exists():
        return []
    keep = []
    for entry in sorted(target.iterdir()):
        if entry.name in names:
            if entry.is_dir() and not entry.is_symlink():
                raise StoreError(f"{entry}: a folder is in the way of an output file; move it "
                                 "or pass --out DIR")
            continue
        if entry.is_dir() and not entry.is_symlink():
            # Staging copies files, not trees: a folder of the user's own stays theirs.
            raise StoreError(f"{target}: holds the folder {entry.name!r}, so it is not an output "
                             "folder of its own; pass --out with a new or empty folder")
        keep.append(entry)
    return keep


def write_file_set(target: Path, files: dict[str, bytes]) -> list[Path]:
    """Make `target` hold `files` (name -> bytes) plus the other files it held; all or nothing.

    Returns the paths of the new files. A full disk, a read-only folder or a file in the way
    is a one-line StoreError, and `target` is then exactly as it was.
    """
    target = Path(target)
    if target.is_symlink():  # swap the folder it points to, keep the link
        target = target.resolve()
    names = list(files)
    stage = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        keep = _check_target(target, names)
        with _locked(target.parent):
            stage = _new_sibling(target, "new")
            for entry in keep:
                _link_or_copy(entry, stage / entry.name)
            for name, data in files.items():
                fs.replace_file(stage / name, data)  # fsynced, the umask's mode
            _swap(stage, target)
            stage = None
    except OSError as err:
        where = err.filename or target
        what = ("free some space" if err.errno in (errno.ENOSPC, errno.EDQUOT)
                else "make it writable")
        raise StoreError(f"{where}: cannot write the output set ({err.strerror or err}); "
                         f"{what} and run again: {target} is unchanged") from None
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
    return [target / name for name in names]


def _swap(stage: Path, target: Path) -> None:
    """Rename `stage` to `target`, the old `target` (if any) removed once the new one is in."""
    if not target.exists():
        os.rename(stage, target)
        return
    # The new folder keeps the old one's permission bits (a group-shared 2775 stays so).
    os.chmod(stage, stat.S_IMODE(target.stat().st_mode))
    old = _new_sibling(target, "old")
    os.rmdir(old)  # only its unique name is needed: rename needs a free name
    os.rename(target, old)
    try:
        os.rename(stage, target)
    except OSError:
        os.rename(old, target)  # put the previous set back
        raise
    shutil.rmtree(old, ignore_errors=True)
    if old.exists():  # a file in it the user cannot delete: say so, do not leave it hidden
        _log.warning("%s: the previous output set could not be removed; delete it by hand",
                     old)


def write_object_set(target: URI, files: dict[str, bytes]) -> list[URI]:
    """`write_file_set` for a cloud folder: every object PUT whole to its final key, the set's
    marker (`MARKERS`) last. StoreError naming the object that could not be written."""
    order = sorted(files, key=lambda name: name in MARKERS)  # stable: markers at the end
    for name in order:
        fs.write_bytes(target / name, files[name])
    return [target / name for name in files]
