"""``bidsport todicom``: NIfTI results back to DICOM, in the study of their source series.

Modules: :mod:`geometry` (affine ↔ DICOM geometry, pure), :mod:`sidecar` (BIDS names,
sidecars and label tables → DICOM attributes), :mod:`pixels` (values → 16-bit pixels),
:mod:`nifti` (reading the input), :mod:`reference` (finding and checking the reference
series), :mod:`writers` (classic MR / SC, Enhanced MR, SEG) and :mod:`export` (the workflow).
"""

from bidsport.todicom.export import ExportOptions, ExportResult, export_nifti

__all__ = ["ExportOptions", "ExportResult", "export_nifti"]
