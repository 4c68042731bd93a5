"""Build DICOM test files from real NIH radiographs with pydicom (no synthetic pictures)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def make_dataset(pixels: np.ndarray | None, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
                 **attrs: Any) -> Dataset:
    """A CR chest PA dataset with the given pixel array (uncompressed), plus extra attributes."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CR_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientName = "Test^Patient"
    ds.PatientID = "SECRET-ID-123"
    if pixels is not None:
        if bits_stored is None:
            bits_stored = pixels.dtype.itemsize * 8
        ds.set_pixel_data(pixels, photometric, bits_stored)
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


def save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def to_jpeg_lossless(src: Path, dst: Path) -> Path:
    """Re-encode an uncompressed DICOM file as JPEG Lossless SV1 with GDCM (BSD/Apache)."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    if not reader.Read():
        raise RuntimeError(f"gdcm could not read {src}")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError("gdcm could not compress to JPEG Lossless")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(dst))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError(f"gdcm could not write {dst}")
    return dst
