"""nibabel, imported without pydicom: ``from bidsport.niftiio import nib``.

``import nibabel`` imports pydicom when it is installed (``nibabel.nifti1`` loads it to
read DICOM extensions of NIfTI headers, which bidsport never reads): ~0.15 s of the
~0.35 s the import takes. This module imports nibabel with pydicom hidden, unless pydicom
is loaded already; nibabel then holds a placeholder for it, and pydicom itself stays
importable as usual. Import nibabel through this module only (an ``import nibabel``
elsewhere, run first, would load pydicom).
"""

from __future__ import annotations

from bidsport.importing import without

with without("pydicom", importing="nibabel"):
    import nibabel as nib

__all__ = ["nib"]
