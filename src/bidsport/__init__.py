"""bidsport: an inbox of raw scanner DICOM packets becomes a validated BIDS dataset."""

__version__ = "0.1.0"
