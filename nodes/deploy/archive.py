"""The release archive, built on the controller: `git archive` plus a REVISION file."""

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import threading
from pathlib import Path

from .base import DeployError, validate_sha

_DIGESTS = {}  # file_sha256: (path, device, inode, size, mtime, ctime) -> hex digest
_DIGESTS_KEPT = 64
_DIGESTS_LOCK = threading.Lock()


def make_archive(repo_path, sha, dest_dir):
    """`git archive` of `sha` plus a REVISION file holding it -> (path of .tar.gz, sha256).

    The same commit always gives the same bytes (fixed gzip header), so the checksum is
    a property of the commit.
    """
    sha = validate_sha(sha)
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    tar_path, final = dest / f"{sha}.tar", dest / f"{sha}.tar.gz"
    proc = subprocess.run(["git", "-C", str(repo_path), "archive", "--format=tar", "-o", str(tar_path),
                           sha], capture_output=True, text=True)
    if proc.returncode != 0:
        raise DeployError(f"git archive {sha} failed: {proc.stderr.strip()}")
    _append_revision(tar_path, sha)
    part = final.with_name(final.name + ".part")
    with open(tar_path, "rb") as src, open(part, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as out:
            shutil.copyfileobj(src, out)
    tar_path.unlink()
    part.replace(final)
    return final, file_sha256(final)


def _append_revision(tar_path, sha):
    # git 2.39 has no --add-virtual-file. Appended last, it wins over a REVISION in the repo.
    with tarfile.open(tar_path, "a") as tar:
        mtime = max((m.mtime for m in tar.getmembers()), default=0)
        data = f"{sha}\n".encode()
        info = tarfile.TarInfo("REVISION")
        info.size, info.mtime, info.mode = len(data), mtime, 0o644
        tar.addfile(info, io.BytesIO(data))


def file_sha256(path):
    """The file's sha256 (hex). Remembered for that version of the file (device, inode, size,
    mtime, ctime), so that the archive of a build going to 50 nodes is read once, not 50
    times; a file changed or replaced since is read again."""
    with open(path, "rb") as handle:
        before = _file_version(path, handle)
        with _DIGESTS_LOCK:
            known = _DIGESTS.get(before)
        if known:
            return known
        digest = hashlib.sha256()
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
        if _file_version(path, handle) == before:  # not written to while it was read
            with _DIGESTS_LOCK:
                _DIGESTS[before] = digest.hexdigest()
                while len(_DIGESTS) > _DIGESTS_KEPT:
                    del _DIGESTS[next(iter(_DIGESTS))]
    return digest.hexdigest()


def _file_version(path, handle):
    st = os.fstat(handle.fileno())
    return (os.fspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
