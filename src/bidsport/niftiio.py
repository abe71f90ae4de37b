"""nibabel without what bidsport never uses of it: ``from bidsport.niftiio import nib``.

``import nibabel`` imports pydicom when it is installed (``nibabel.nifti1`` loads it to
read DICOM extensions of NIfTI headers, which bidsport never reads): ~0.15 s of the
~0.35 s the import takes. This module imports nibabel with pydicom hidden, unless pydicom
is loaded already; nibabel then holds a placeholder for it, and pydicom itself stays
importable as usual. scipy, when installed (bidsport does not need it), is hidden too:
nibabel reads SPM's ``.mat`` files with it (~10 ms). ``urllib.request`` (for nibabel's
``from_url``; ~30 ms with the HTTP, e-mail and SSL modules it loads) is deferred until
something uses it (nothing in bidsport does, see :func:`bidsport.importing.without`).
Import nibabel through this module only (an ``import nibabel`` elsewhere, run first,
would load them all).
"""

from __future__ import annotations

from bidsport.importing import without

with without("pydicom", "scipy", importing="nibabel", deferred=("urllib.request",)):
    import nibabel as nib

__all__ = ["nib"]
