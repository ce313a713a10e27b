"""Writes that survive a killed process and a lost machine: whole or absent, on disk before they count.

A file is written to a temporary name, fsynced and renamed; a folder (checkpoint, adapter, export) is written to a
temporary folder, every file and folder in it fsynced, then swapped in; after every rename the parent folder is
fsynced, so the rename itself is on disk. Files and folders get the permissions the umask gives (tempfile's and
safetensors' are owner-only), so a teammate or a server running as another user can read a run.

No torch here: the Jupyter server side reads run folders through rundir, which imports this module.
"""
import errno
import json
import os
import secrets
import shutil
from pathlib import Path

from .errors import RunError

SWAPPED = ".prev-"  # atomic_dir's old folder during a swap; restored if the new one never arrived


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=1, ensure_ascii=False, allow_nan=False) + "\n")


def write_text(path, text):
    write_atomic(path, lambda fh: fh.write(text.encode("utf-8")))


def write_atomic(path, write):
    """Call write(binary file) on a temporary file beside `path`, then rename it to `path`: readers see the old file
    or the new one, never half of one."""
    path = Path(path)
    fd, tmp = new_file(path.parent, f".{path.name}.", ".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        sync_dir(path.parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_dir(final, write, intact="earlier checkpoints are intact"):
    """Call write(tmp_folder), then put it in place of `final` (replacing an older one). Disk errors say what
    happened, and that `intact` is still true.

    The swap is two renames (final -> .prev-NAME, tmp -> final); a process killed between them leaves only the
    .prev- folder, which the next atomic_dir for `final` (or RunDir.clean_partial) puts back."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    restore_swapped(final)
    tmp = new_temp_dir(final.parent, f".tmp-{final.name}-")
    try:
        write(tmp)
        apply_umask(tmp)
        sync_tree(tmp)
        if final.exists():
            prev = final.with_name(SWAPPED + final.name)
            os.replace(final, prev)
            os.replace(tmp, final)
            sync_dir(final.parent)
            shutil.rmtree(prev, ignore_errors=True)  # a kill here leaves it beside `final`: removed next time
        else:
            os.replace(tmp, final)
            sync_dir(final.parent)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        restore_swapped(final)
        if isinstance(e, OSError):
            raise RunError(f"could not write {final}: {e.strerror or e} (disk full or read-only?); {intact}") from e
        raise
    return final


def restore_swapped(final):
    """Finish what a process killed in atomic_dir's swap left: the old folder goes back in place of a missing
    `final`; beside a present one it is stale and removed."""
    final = Path(final)
    prev = final.with_name(SWAPPED + final.name)
    if not prev.is_dir():
        return
    if final.exists():
        shutil.rmtree(prev, ignore_errors=True)
    else:
        os.replace(prev, final)
        sync_dir(final.parent)


def remove_dir(path):
    """Delete a folder so that no reader ever sees part of it: renamed to a hidden `.old-` name first (atomic),
    then removed. A process killed mid-delete leaves only the hidden folder, which clean_partial clears."""
    path = Path(path)
    doomed = path.with_name(f".old-{path.name}-{os.getpid()}")
    os.replace(path, doomed)
    sync_dir(path.parent)  # the rename is on disk before the first file goes
    shutil.rmtree(doomed, ignore_errors=True)


def new_temp_dir(parent, prefix):
    """A new folder `parent/prefix<random>`, created with the permissions the umask gives (tempfile.mkdtemp's are
    0700: only the owner could read what is renamed from it)."""
    for _ in range(100):
        path = Path(parent) / f"{prefix}{secrets.token_hex(4)}"
        try:
            os.mkdir(path, 0o777)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(parent))


def new_file(parent, prefix, suffix):
    """(fd, path) of a new file `parent/prefix<random>suffix`, opened for writing with the umask's permissions."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_BINARY", 0)
    for _ in range(100):
        path = Path(parent) / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(parent))


def apply_umask(folder):
    """Give every file and folder under `folder` the permissions the umask gives a new one (safetensors 0.8 creates
    its files 0600 whatever the umask: safetensors/safetensors#782)."""
    mask = umask()
    for root, dirs, files in os.walk(folder):
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)


def umask():
    """The process's umask, read without changing it where Linux allows (another thread may be creating files)."""
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)  # elsewhere the only way to read it is to set it: briefly the strictest common one
    os.umask(mask)
    return mask


def sync_tree(folder):
    """fsync every file and folder under `folder`, and `folder` itself."""
    for root, dirs, files in os.walk(folder, topdown=False):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY | getattr(os, "O_BINARY", 0))
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        sync_dir(root)


def sync_dir(folder):
    """fsync a folder, so that the names created, renamed or removed in it are on disk."""
    if os.name == "nt":  # Windows cannot open a folder as a file; NTFS journals the rename
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):  # file systems that cannot sync a folder
            raise
    finally:
        os.close(fd)
