"""Builders of hostile archives shared by the archive and hostile-input tests."""

from __future__ import annotations

import tarfile


def tar_member(
    name: str, data: bytes | None = b"x", **fields: object
) -> tuple[tarfile.TarInfo, bytes | None]:
    """A tar member (any type, by ``fields``) and its content (None for non-files)."""
    info = tarfile.TarInfo(name)
    info.mtime = 1_700_000_000
    for key, value in fields.items():
        setattr(info, key, value)
    if info.isreg() and data is not None:
        info.size = len(data)
    else:
        data = None
    return info, data
