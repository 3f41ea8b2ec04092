"""A content-addressed store of kernels, initrds and images under the boot root.

``add`` copies a file to ``images/<sha256 prefix>/<name>``: the path names the
content, so a new version of a kernel is a new file at a new path, and a node
downloading an image is never served a file replaced under it. Files are
published with ``link(2)`` (which never overwrites) and made read-only.
Profiles refer to images by that path (``fleetboot profile add --kernel
images/3f2a.../vmlinuz``); ``remove`` refuses images a profile refers to.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetboot.errors import FleetbootError
from fleetboot.inventory.models import BootProfile

IMAGES_DIR = "images"
PREFIX_LEN = 16  # 64 bits of SHA-256: collisions are not a practical concern
MAX_NAME = 255
_PREFIX = re.compile(rf"^[0-9a-f]{{{PREFIX_LEN}}}$")


class ImageError(FleetbootError):
    pass


def check_image_name(name: str) -> str:
    """A single, printable file name (no directories). Pure."""
    if not name or name in (".", ".."):
        raise ImageError("an image name must not be empty, '.' or '..'")
    if "/" in name or "\\" in name:
        raise ImageError(f"image name {name!r} must not contain a slash; give a plain file name")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise ImageError("an image name must not contain control characters")
    if name.startswith("."):
        raise ImageError("an image name must not start with '.'")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME:
        raise ImageError(f"an image name must be at most {MAX_NAME} bytes")
    return name


# Signatures of an initrd: a cpio archive ("newc", "crc", "odc") or the compressed
# forms the kernel unpacks (gzip, zstd, xz, lz4 legacy, bzip2, lzma).
_INITRD_MAGIC = (b"070701", b"070702", b"070707", b"\x1f\x8b", b"\x28\xb5\x2f\xfd",
                 b"\xfd7zXZ\x00", b"\x02\x21\x4c\x18", b"BZh", b"\x5d\x00\x00")


def image_role(head: bytes, name: str) -> str | None:
    """``kernel``, ``initrd`` or None, from the first 4 KiB of a file (pure).

    x86 kernels carry "HdrS" at 0x202 (the boot protocol header), arm64 and
    RISC-V Images "ARM\\x64" at 0x38 and "RSC\\x05" at 0x38; an initrd is a
    (compressed) cpio archive, and is named like one when the content is ambiguous.
    """
    if head[0x202:0x206] == b"HdrS" or head[0x38:0x3C] in (b"ARM\x64", b"RSC\x05"):
        return "kernel"
    lowered = name.lower()
    if any(word in lowered for word in ("initrd", "initramfs")) or head.startswith(
            _INITRD_MAGIC[:3]):
        return "initrd"
    if any(word in lowered for word in ("vmlinuz", "vmlinux", "bzimage", "kernel")):
        return "kernel"
    if head.startswith(_INITRD_MAGIC):
        return "initrd"
    return None


@dataclass(frozen=True)
class StoredImage:
    digest: str  # the sha256 prefix (PREFIX_LEN hex digits)
    name: str
    size: int
    mtime: float

    @property
    def path(self) -> str:
        """The path under the boot root; what profiles and /boot/files/ URLs use."""
        return f"{IMAGES_DIR}/{self.digest}/{self.name}"


class ImageStore:
    def __init__(self, boot_root: str | os.PathLike[str]) -> None:
        self.root = Path(boot_root)
        self.dir = self.root / IMAGES_DIR

    def add(self, source: str | os.PathLike[str],
            name: str | None = None) -> tuple[StoredImage, bool]:
        """Store a copy of ``source``; returns the image and whether it was new."""
        src = Path(source)
        if not src.is_file():
            raise ImageError(f"{src} is not a readable regular file")
        name = check_image_name(name or src.name)
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp, digest = self._copy_hashing(src)
        try:
            target_dir = self.dir / digest
            target_dir.mkdir(exist_ok=True)
            target = target_dir / name
            try:
                os.link(tmp, target)  # atomic, and never replaces an existing file
                created = True
            except FileExistsError:
                created = False  # same content under the same name: already stored
        finally:
            os.unlink(tmp)
        return self._stat(digest, name), created

    def _copy_hashing(self, src: Path) -> tuple[str, str]:
        fd, tmp = tempfile.mkstemp(prefix=".incoming-", dir=self.dir)
        sha = hashlib.sha256()
        try:
            with src.open("rb") as fin, os.fdopen(fd, "wb") as fout:
                while block := fin.read(1 << 20):
                    sha.update(block)
                    fout.write(block)
                fout.flush()
                os.fsync(fout.fileno())
            os.chmod(tmp, 0o444)  # published images are never edited in place
        except BaseException:
            os.unlink(tmp)
            raise
        return tmp, sha.hexdigest()[:PREFIX_LEN]

    def _stat(self, digest: str, name: str) -> StoredImage:
        st = (self.dir / digest / name).stat()
        return StoredImage(digest, name, st.st_size, st.st_mtime)

    def list(self) -> list[StoredImage]:
        if not self.dir.is_dir():
            return []
        found = []
        for sub in sorted(self.dir.iterdir()):
            if not (_PREFIX.match(sub.name) and sub.is_dir()):
                continue
            for f in sorted(sub.iterdir()):
                if f.is_file() and not f.is_symlink():
                    found.append(self._stat(sub.name, f.name))
        return found

    def find(self, ref: str) -> StoredImage:
        """An image by path (``images/<digest>/<name>``, ``<digest>/<name>``), a unique
        digest prefix (4+ hex digits), or a unique name."""
        ref = ref.strip().removeprefix("/").removeprefix(IMAGES_DIR + "/")
        images = self.list()
        if "/" in ref:
            matches = [i for i in images if f"{i.digest}/{i.name}" == ref]
        elif re.fullmatch(r"[0-9a-f]{4,}", ref):
            matches = [i for i in images if i.digest.startswith(ref)] or \
                [i for i in images if i.name == ref]
        else:
            matches = [i for i in images if i.name == ref]
        if not matches:
            raise ImageError(f"no image {ref!r}; `fleetboot image list` shows the stored images")
        if len(matches) > 1:
            paths = ", ".join(i.path for i in matches)
            raise ImageError(f"{ref!r} matches several images ({paths}); give the full path")
        return matches[0]

    def verify(self, image: StoredImage) -> bool:
        """Does the file's content still hash to its directory name?"""
        sha = hashlib.sha256()
        with (self.dir / image.digest / image.name).open("rb") as f:
            while block := f.read(1 << 20):
                sha.update(block)
        return sha.hexdigest().startswith(image.digest)

    def delete(self, image: StoredImage) -> None:
        """Remove the file (no reference check: use :func:`remove_image`)."""
        path = self.dir / image.digest / image.name
        path.unlink()
        with contextlib.suppress(OSError):  # other names with the same content remain
            path.parent.rmdir()
        # A node still downloading it keeps its open descriptor: unlink does not cut it off.


def referenced_by(session: Session, image: StoredImage) -> list[str]:
    """Names of the profiles whose kernel, initrd or script mention the image's path."""
    users = []
    for prof in session.scalars(select(BootProfile).order_by(BootProfile.name)):
        texts = (prof.kernel or "", prof.initrd or "", prof.script or "")
        if any(image.path in t for t in texts):
            users.append(prof.name)
    return users


def remove_image(store: ImageStore, session: Session, ref: str) -> StoredImage:
    image = store.find(ref)
    users = referenced_by(session, image)
    if users:
        raise ImageError(f"{image.path} is used by profile(s) {', '.join(users)}; "
                         "remove those profiles first (`fleetboot profile remove`)")
    store.delete(image)
    return image

