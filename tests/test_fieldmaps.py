"""Which images each fieldmap corrects (IntendedFor), from the order of acquisition."""

from __future__ import annotations

from pathlib import Path

import pytest

from bidsport.export import intended_for
from bidsport.records import Classification, ConvertedImage, FileHeader, PlannedSeries, Series

SUFFIX_DATATYPE = {
    "epi": "fmap",
    "magnitude": "fmap",
    "phasediff": "fmap",
    "fieldmap": "fmap",
    "bold": "func",
    "sbref": "func",
    "dwi": "dwi",
    "T1w": "anat",
}


def acquisition(number: int, name: str, minute: int) -> tuple[PlannedSeries, ConvertedImage]:
    """Series ``number`` acquired at 10:``minute``, converted into ``name`` (e.g.
    "fmap/sub-01_dir-AP_epi"), whose suffix gives its datatype."""
    suffix = name.rsplit("_", 1)[1]
    header = FileHeader(Path(f"/in/{number}.dcm"), 1, 0, series_number=number)
    series = Series(
        f"1.2.3.{number}",
        header,
        (header.path,),
        n_volumes=1,
        acquisition_date="20260101",
        acquisition_time=f"10{minute:02d}00.000000",
    )
    cls = Classification(SUFFIX_DATATYPE[suffix], suffix)
    image = ConvertedImage(series.series_id, f"{name}.nii.gz", None, f"{name}.json")
    return PlannedSeries(series, cls, None), image


def corrected(*acquisitions: tuple[str, int]) -> dict[str, list[str]]:
    """Fieldmap name → the names it corrects, for (name, minute) acquisitions."""
    images = [acquisition(i + 1, name, minute) for i, (name, minute) in enumerate(acquisitions)]
    result = intended_for(images, "01", None)
    return {
        sidecar.removesuffix(".json"): sorted(
            uri.removeprefix("bids::sub-01/").removesuffix(".nii.gz") for uri in uris
        )
        for sidecar, uris in result.items()
    }


AP, PA = "fmap/sub-01_dir-AP_epi", "fmap/sub-01_dir-PA_epi"
BOLD, SBREF = "func/sub-01_task-rest_bold", "func/sub-01_task-rest_sbref"


def test_both_images_of_an_epi_pair_correct_the_bold_after_them():
    """The AP and PA images are acquired minutes apart: one set, not two."""
    assert corrected((AP, 1), (PA, 3), (SBREF, 5), (BOLD, 6)) == {
        AP: [BOLD, SBREF],
        PA: [BOLD, SBREF],
    }


def test_a_pair_acquired_after_every_image_corrects_them_all():
    bold2 = "func/sub-01_task-rest_run-2_bold"
    assert corrected((BOLD, 1), (bold2, 10), (AP, 20), (PA, 22)) == {
        AP: [BOLD, bold2],
        PA: [BOLD, bold2],
    }


def test_each_image_gets_the_latest_set_before_it():
    ap2, pa2 = "fmap/sub-01_dir-AP_run-2_epi", "fmap/sub-01_dir-PA_run-2_epi"
    bold2 = "func/sub-01_task-rest_run-2_bold"
    dwi = "dwi/sub-01_dwi"
    t1w = "anat/sub-01_T1w"
    assert corrected(
        (AP, 1), (PA, 2), (BOLD, 3), (t1w, 10), (ap2, 20), (pa2, 21), (bold2, 22), (dwi, 30)
    ) == {AP: [BOLD], PA: [BOLD], ap2: [dwi, bold2], pa2: [dwi, bold2]}


def test_an_image_between_two_acquisitions_of_a_kind_splits_them():
    """An epi acquired right before a DWI serves the DWI; the pair before the BOLD does
    not reach past it."""
    dwi_pa = "fmap/sub-01_acq-dwi_dir-PA_epi"
    dwi = "dwi/sub-01_dir-AP_dwi"
    assert corrected((AP, 1), (PA, 2), (BOLD, 3), (dwi_pa, 10), (dwi, 11)) == {
        AP: [BOLD],
        PA: [BOLD],
        dwi_pa: [dwi],
    }


def test_a_field_map_and_an_epi_pair_are_separate_sets():
    """Magnitude and phase difference series of one acquisition are one set; an epi pair
    acquired after them is another, and the BOLD after both gets the later one."""
    mag, phasediff = "fmap/sub-01_magnitude", "fmap/sub-01_phasediff"
    bold2 = "func/sub-01_task-rest_run-2_bold"
    assert corrected((mag, 1), (phasediff, 1), (BOLD, 5), (AP, 10), (PA, 11), (bold2, 12)) == {
        mag: [BOLD],
        phasediff: [BOLD],
        AP: [bold2],
        PA: [bold2],
    }


@pytest.mark.parametrize(
    "acquisitions",
    [
        pytest.param([(AP, 1), (PA, 2)], id="no-image-to-correct"),
        pytest.param([(BOLD, 1)], id="no-fieldmap"),
    ],
)
def test_nothing_to_link(acquisitions):
    assert all(not targets for targets in corrected(*acquisitions).values())


def test_an_equal_time_is_ordered_by_series_number():
    """Two acquisitions stamped with the same minute keep the scanner's series order."""
    assert corrected((AP, 1), (BOLD, 1), (PA, 1)) == {AP: [BOLD], PA: []}
