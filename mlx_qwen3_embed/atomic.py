"""Atomic writes, for every output and every conversion: a file or folder is built beside its destination under a
hidden name and renamed into place at the end, so an interrupted run (an error, Ctrl-C, kill -9, a full disk)
never leaves a half-written file or folder at the destination. Finished files and folders get the umask's usual
permissions (a temporary one is created private)."""

import errno
import glob
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator


def write_file(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call `write` on a temporary binary file beside `path`, flush it to disk, then rename it to `path`.

    A full disk is OSError(ENOSPC, "no space left on device writing PATH ..."), and nothing is left at `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException as e:
        os.unlink(tmp)
        if disk_full(e):
            raise no_space(path) from None
        raise


def disk_full(e: BaseException) -> bool:
    """Whether `e` says the disk (or the user's quota) is full: ENOSPC/EDQUOT, or numpy's short write
    ("N requested and M written", no errno), or a library's OSError that only names it."""
    if not isinstance(e, OSError):
        return False
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return e.errno is None and (("requested and" in text and "written" in text) or "No space left" in text)


def no_space(path: Path) -> OSError:
    return OSError(errno.ENOSPC, f"no space left on device writing {path}: free some space (or write elsewhere) "
                                 "and run again")


def refuse_overwrite(path: Path, overwrite: bool) -> None:
    """The one rule for an output file: an existing `path` is replaced only with overwrite=True (--overwrite)."""
    path = Path(path)
    if not overwrite and (path.exists() or path.is_symlink()):
        raise FileExistsError(f"{path} exists: pass overwrite=True to replace it")


def partial_prefix(dst: Path) -> str:
    """The hidden name under which a folder for `dst` is built: `.{name}.partial-`."""
    return f".{Path(dst).name}.partial-"


def remove_stale_partials(dst: Path) -> None:
    """Remove the hidden folders that builds of `dst` killed mid-run (SIGKILL, power loss) left beside it: those
    named for a process that no longer exists. A running build's folder stays."""
    dst = Path(dst)
    prefix = partial_prefix(dst)
    for folder in dst.parent.glob(glob.escape(prefix) + "*"):
        pid = folder.name[len(prefix):].split("-", 1)[0]
        if folder.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def refuse_existing(dst: Path) -> None:
    """Raise FileExistsError when `dst` exists (a folder is never written over)."""
    dst = Path(dst)
    if dst.exists() or dst.is_symlink():
        raise FileExistsError(f"{dst} already exists: choose a new destination or remove it first")


@contextmanager
def building_folder(dst: Path) -> Iterator[Path]:
    """Yield an empty hidden folder beside `dst` (its parents made); renamed to `dst` when the block ends,
    removed if it raises.

    Refuses an existing `dst` (FileExistsError, refuse_existing) on entry and again right before the rename:
    another run may have finished meanwhile. Callers that work long before they write call refuse_existing first.
    """
    dst = Path(dst)
    refuse_existing(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(dst)
    tmp = Path(tempfile.mkdtemp(prefix=f"{partial_prefix(dst)}{os.getpid()}-", dir=dst.parent))
    try:
        yield tmp
        refuse_existing(dst)
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700
        os.rename(tmp, dst)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if disk_full(e):
            raise no_space(dst) from None
        raise


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process, or no pid at all: leave its folder
        pass
    return True
