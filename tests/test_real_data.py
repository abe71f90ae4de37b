"""Participant + group level on every real vendor dataset of ../shared/data.

Each dataset's In/ folder is one packet of an inbox (the inbox entries are symlinks to
the read-only originals). The classification each series must get is written here, and
the converted images are compared with the dataset's Ref/ outputs (shape, b-values).
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from bidsport.cli.run import main
from bidsport.fileops import read_tsv
from bidsport.validator import find_validator, run_validator

#: dataset → {BIDS image (relative to sub-<dataset>/): Ref image to compare with, or None}
EXPECTED: dict[str, dict[str, str | None]] = {
    "enh": {
        "fmap/sub-enh_fieldmap.nii.gz": "Philips_WIP_B0_NS_801_e2_fieldmaphz.nii",
        "fmap/sub-enh_magnitude.nii.gz": "Philips_WIP_B0_NS_801_e1.nii",
        "func/sub-enh_task-rest_bold.nii.gz": "Siemens_REST1_w_SMS_PF7-8_6.nii",
    },
    "ge": {
        "anat/sub-ge_T1w.nii.gz": None,
        "dwi/sub-ge_acq-AxDWITENSORR2_dwi.nii.gz": "Ax_DWI_TENSOR_R2_1.nii",
        "dwi/sub-ge_acq-AxDWITENSORR2MB2_dwi.nii.gz": None,
        "func/sub-ge_task-unknown_bold.nii.gz": "Ax_fMRI_HB3_48sl_int_asc_14.nii",
    },
    "nih": {
        "fmap/sub-nih_dir-AP_epi.nii.gz": "EPI_PE=AP_3.nii",
        "fmap/sub-nih_dir-PA_epi.nii.gz": "EPI_PE=PA_4.nii",
        "fmap/sub-nih_dir-RL_epi.nii.gz": "EPI_PE=RL_5.nii",
        "fmap/sub-nih_dir-LR_epi.nii.gz": "EPI_PE=LR_6.nii",
        "func/sub-nih_task-unknown_acq-AxialEPIFMRIInterleavedItoS_bold.nii.gz": "DCM2NIIX_regression_test_4.nii",
        "func/sub-nih_task-unknown_acq-AxialEPIFMRISequentialItoS_bold.nii.gz": "DCM2NIIX_regression_test_5.nii",
        "func/sub-nih_task-unknown_acq-AxialEPIFMRIInterleavedStoI_bold.nii.gz": "DCM2NIIX_regression_test_6.nii",
        "func/sub-nih_task-unknown_acq-AxialEPIFMRISequentialStoI_bold.nii.gz": "DCM2NIIX_regression_test_7.nii",
    },
    "philips": {
        "dwi/sub-philips_dwi.nii.gz": None,
        "func/sub-philips_task-unknown_bold.nii.gz": "EPI_asc_CLEAR_201.nii",
    },
    "ts": {f"func/sub-ts_task-unknown_run-{i}_bold.nii.gz": f"{i}.nii" for i in range(1, 10)},
    "uih": {
        "dwi/sub-uih_dir-PA_dwi.nii.gz": "dti_tra_dir16_PA_6_134431.nii",
        "dwi/sub-uih_dir-AP_dwi.nii.gz": "dti_tra_dir16_AP_9_134431.nii",
    },
}


@pytest.fixture(scope="module")
def real_dataset(shared_data, tmp_path_factory):
    base = tmp_path_factory.mktemp("real")
    inbox = base / "inbox"
    inbox.mkdir()
    for name in EXPECTED:
        (inbox / name).symlink_to(shared_data / f"dcm_qa_{name}" / "In")
    out = base / "bids"
    code = main([str(inbox), str(out), "participant"])
    return shared_data, inbox, out, code


def test_participant_level_finishes(real_dataset):
    _, _, _, code = real_dataset
    assert code == 0


@pytest.mark.parametrize("dataset", sorted(EXPECTED))
def test_every_reference_image_is_converted_as_expected(real_dataset, dataset):
    shared, _, out, _ = real_dataset
    sub_dir = out / f"sub-{dataset}"
    have = sorted(str(p.relative_to(sub_dir)) for p in sub_dir.rglob("*.nii.gz"))
    assert have == sorted(EXPECTED[dataset]), f"{dataset}: got {have}"
    for image, ref in EXPECTED[dataset].items():
        img = nib.load(sub_dir / image)
        if ref is not None:
            ref_img = nib.load(shared / f"dcm_qa_{dataset}" / "Ref" / ref)
            assert img.shape[:3] == ref_img.shape[:3], image
            assert np.allclose(img.affine, ref_img.affine, atol=1e-3), image
            if len(ref_img.shape) == 4:
                assert img.shape == ref_img.shape, image
        if image.startswith("dwi/"):
            bval = sub_dir / image.replace(".nii.gz", ".bval")
            values = [float(v) for v in bval.read_text().split()]
            assert len(values) == (img.shape[3] if len(img.shape) == 4 else 1)
            if ref is not None:
                ref_bval = shared / f"dcm_qa_{dataset}" / "Ref" / ref.replace(".nii", ".bval")
                assert values == [float(v) for v in ref_bval.read_text().split()]
        sidecar = json.loads((sub_dir / image.replace(".nii.gz", ".json")).read_text())
        assert sidecar["BidsportSourceDicom"]
        for key in (
            "PatientName",
            "PatientID",
            "InstitutionName",
            "StationName",
            "DeviceSerialNumber",
            "SeriesInstanceUID",  # Siemens UIDs embed the scanner serial
            "ImageComments",
        ):
            assert key not in sidecar, f"{image}: {key}"


def test_notes_and_readmes_are_excluded_with_a_reason(real_dataset):
    _, _, out, _ = real_dataset
    rows = read_tsv(out / "sourcedata/bidsport/sub-nih/files.tsv")
    readmes = [r for r in rows if r["file"].endswith("README-Series.txt")]
    assert len(readmes) == 8
    assert all("not a DICOM" in r["excluded"] for r in readmes)


def test_fieldmaps_of_another_study_correct_nothing(real_dataset):
    """dcm_qa_nih holds two exams: four GE BOLD runs, and a Siemens exam of four epi
    images (AP, PA, RL, LR) on another scanner with another matrix. The epi images must
    not name the GE runs (a fieldmap corrects images of its own study only), and a note
    says why each pair corrects nothing."""
    _, _, out, _ = real_dataset
    for direction in ("AP", "PA", "RL", "LR"):
        sidecar = json.loads((out / f"sub-nih/fmap/sub-nih_dir-{direction}_epi.json").read_text())
        assert "IntendedFor" not in sidecar, direction
    (report,) = (out / "derivatives/bidsport/logs").glob("participant_*_report.json")
    (nih,) = [
        s for s in json.loads(report.read_text())["sessions"] if s["participant_id"] == "sub-nih"
    ]
    notes = [p["reason"] for p in nih["problems"] if "IntendedFor" in p["reason"]]
    assert len(notes) == 2, notes  # one per pair
    assert all("(no func/dwi/perf image of its DICOM study was converted)" in n for n in notes)
    (studies,) = [p["reason"] for p in nih["problems"] if "DICOM studies" in p["reason"]]
    assert studies.startswith("the session's series come from 2 DICOM studies from 2 scanners")
    assert "GE MEDICAL SYSTEMS" in studies and "SIEMENS" in studies


def test_group_level_output_passes_the_validator(real_dataset):
    _, inbox, out, _ = real_dataset
    if find_validator() is None:
        pytest.skip("bids-validator-deno is not installed")
    assert main([str(inbox), str(out), "group"]) == 0
    result = run_validator(out)
    assert result.ran and not result.errors, [e.describe() for e in result.errors]


def test_the_originals_are_untouched(real_dataset):
    shared, _, out, _ = real_dataset
    # hard links share the inode: the originals' content is what was imported
    raw = out / "sourcedata" / "raw" / "sub-ge"
    some = next(p for p in raw.rglob("*") if p.is_file())
    original = shared / "dcm_qa_ge" / "In" / some.relative_to(raw / "ge")
    assert original.read_bytes() == some.read_bytes()


def test_technical_sidecar_values_are_kept_and_scrubbed_keys_are_noted(real_dataset):
    """Without --anonymize, values the scanner's software wrote are kept verbatim though
    they hold an identifier's token (dcm_qa_nih's institution "NIH" in the Siemens
    sequence file name); typed values are scrubbed, and a note names the keys."""
    _, _, out, _ = real_dataset
    epi = json.loads((out / "sub-nih/fmap/sub-nih_dir-AP_epi.json").read_text())
    assert epi["PulseSequenceDetails"].endswith("nih_ep2d_bold")
    (report,) = (out / "derivatives/bidsport/logs").glob("participant_*_report.json")
    notes = [
        p["reason"]
        for s in json.loads(report.read_text())["sessions"]
        for p in s["problems"]
        if "identifiers removed" in p["reason"]
    ]
    assert notes and all(n.endswith("(replaced by X)") for n in notes)
    assert not [n for n in notes if "PulseSequenceDetails" in n or "SequenceName" in n]
