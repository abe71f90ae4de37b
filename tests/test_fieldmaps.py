"""Which images each fieldmap corrects (IntendedFor), from the order of acquisition."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bidsport.export import link_fieldmaps
from bidsport.records import Classification, ConvertedImage, FileHeader, PlannedSeries, Series

SUFFIX_DATATYPE = {
    "epi": "fmap",
    "magnitude": "fmap",
    "phasediff": "fmap",
    "fieldmap": "fmap",
    "m0scan": "fmap",
    "TB1TFL": "fmap",
    "bold": "func",
    "sbref": "func",
    "dwi": "dwi",
    "asl": "perf",
    "T1w": "anat",
}


def acquisition(
    number: int,
    name: str,
    when: int | tuple[str, str] | None,
    corrects: tuple[str, ...] | None = None,
    study: str | None = None,
) -> tuple[PlannedSeries, ConvertedImage]:
    """Series ``number``, converted into ``name`` (e.g. "fmap/sub-01_dir-AP_epi", whose
    suffix gives the datatype and whose labels the entities), acquired ``when``: a minute
    after 10:00 on 2026-01-01, a (date, time), or never said. ``corrects`` is as a rule's
    ``set.corrects``; ``study`` the StudyInstanceUID."""
    suffix = name.rsplit("_", 1)[1]
    labels = name.split("/")[1].split("_")[1:-1]  # the entities after sub-01
    date, time = (
        ("20260101", f"10{when:02d}00.000000") if isinstance(when, int) else when or (None, None)
    )
    header = FileHeader(Path(f"/in/{number}.dcm"), 1, 0, series_number=number, study_uid=study)
    series = Series(
        f"1.2.3.{number}",
        header,
        (header.path,),
        n_volumes=1,
        acquisition_date=date,
        acquisition_time=time,
    )
    entities = dict(label.split("-", 1) for label in labels)
    cls = Classification(SUFFIX_DATATYPE[suffix], suffix, entities, corrects=corrects)
    image = ConvertedImage(series.series_id, f"{name}.nii.gz", None, f"{name}.json")
    return PlannedSeries(series, cls, None), image


def corrected(*acquisitions: tuple, numbers: list[int] | None = None) -> dict[str, list[str]]:
    """Fieldmap name → the names it corrects, for (name, when[, corrects]) acquisitions,
    numbered 1, 2... in the order given (or ``numbers``)."""
    numbers = numbers or list(range(1, len(acquisitions) + 1))
    images = [acquisition(n, *a) for n, a in zip(numbers, acquisitions, strict=True)]
    result = link_fieldmaps(images, "01", None).intended_for
    return {
        sidecar.removesuffix(".json"): sorted(
            uri.removeprefix("bids::sub-01/").removesuffix(".nii.gz") for uri in uris
        )
        for sidecar, uris in result.items()
    }


AP, PA = "fmap/sub-01_dir-AP_epi", "fmap/sub-01_dir-PA_epi"
AP2, PA2 = "fmap/sub-01_dir-AP_run-2_epi", "fmap/sub-01_dir-PA_run-2_epi"
BOLD, SBREF = "func/sub-01_task-rest_bold", "func/sub-01_task-rest_sbref"
BOLD2 = "func/sub-01_task-rest_run-2_bold"
MAG, PHASEDIFF = "fmap/sub-01_magnitude", "fmap/sub-01_phasediff"
MAG2, PHASEDIFF2 = "fmap/sub-01_run-2_magnitude", "fmap/sub-01_run-2_phasediff"
T1W, DWI = "anat/sub-01_T1w", "dwi/sub-01_dir-AP_dwi"


def test_both_images_of_an_epi_pair_correct_the_bold_after_them():
    """The AP and PA images are acquired minutes apart: one set, not two."""
    assert corrected((AP, 1), (PA, 3), (SBREF, 5), (BOLD, 6)) == {
        AP: [BOLD, SBREF],
        PA: [BOLD, SBREF],
    }


def test_a_pair_acquired_after_every_image_corrects_them_all():
    assert corrected((BOLD, 1), (BOLD2, 10), (AP, 20), (PA, 22)) == {
        AP: [BOLD, BOLD2],
        PA: [BOLD, BOLD2],
    }


def test_each_image_gets_the_latest_set_before_it():
    assert corrected(
        (AP, 1), (PA, 2), (BOLD, 3), (T1W, 10), (AP2, 20), (PA2, 21), (BOLD2, 22), (DWI, 30)
    ) == {AP: [BOLD], PA: [BOLD], AP2: [DWI, BOLD2], PA2: [DWI, BOLD2]}


def test_a_repeated_fieldmap_starts_a_new_set():
    """A second AP image, or a second field measurement (after a re-shim), with no image
    between: the image after them takes the latest."""
    assert corrected((AP, 1), (PA, 2), (AP2, 3), (PA2, 4), (BOLD, 5)) == {
        AP: [],
        PA: [],
        AP2: [BOLD],
        PA2: [BOLD],
    }
    assert corrected(
        (MAG, 1), (PHASEDIFF, 1), (T1W, 2), (MAG2, 8), (PHASEDIFF2, 8), (SBREF, 10), (BOLD, 10)
    ) == {MAG: [], PHASEDIFF: [], MAG2: [BOLD, SBREF], PHASEDIFF2: [BOLD, SBREF]}


def test_a_fieldmap_acquired_again_replaces_its_first_image():
    """AP, PA, AP again: the BOLD gets the PA and the second AP (the first AP was redone).
    Images of a pair whose names give no direction are never taken for a repeat."""
    assert corrected((AP, 1), (PA, 2), (AP2, 3), (BOLD, 4)) == {AP: [], PA: [BOLD], AP2: [BOLD]}
    fwd, rev = "fmap/sub-01_acq-fwd_epi", "fmap/sub-01_acq-fwd_run-2_epi"
    assert corrected((fwd, 1), (rev, 2), (BOLD, 3)) == {fwd: [BOLD], rev: [BOLD]}


def test_a_field_map_and_an_epi_pair_are_separate_sets():
    """Magnitude and phase difference series of one acquisition are one set; an epi pair
    is another, and an image takes the latest set before it."""
    assert corrected((MAG, 1), (PHASEDIFF, 1), (BOLD, 5), (AP, 10), (PA, 11), (BOLD2, 12)) == {
        MAG: [BOLD],
        PHASEDIFF: [BOLD],
        AP: [BOLD2],
        PA: [BOLD2],
    }
    assert corrected((MAG, 1), (PHASEDIFF, 1), (AP, 2), (PA, 3), (BOLD, 4)) == {
        MAG: [],
        PHASEDIFF: [],
        AP: [BOLD],
        PA: [BOLD],
    }


def test_pairs_on_two_axes_are_two_sets():
    """dcm_qa_nih: AP, PA, RL and LR acquired after the BOLD runs: the AP/PA pair is the
    first set after them, the RL/LR pair another."""
    rl, lr = "fmap/sub-01_dir-RL_epi", "fmap/sub-01_dir-LR_epi"
    assert corrected((BOLD, 1), (BOLD2, 2), (AP, 10), (PA, 11), (rl, 12), (lr, 13)) == {
        AP: [BOLD, BOLD2],
        PA: [BOLD, BOLD2],
        rl: [],
        lr: [],
    }


def test_an_acq_label_that_names_a_datatype_keeps_the_fieldmap_for_it():
    """A b0 acquired for the DWI right after the BOLD's pair, named acq-dwi."""
    b0 = "fmap/sub-01_acq-dwi_dir-PA_epi"
    assert corrected((AP, 1), (PA, 2), (b0, 3), (BOLD, 4), (DWI, 5)) == {
        AP: [BOLD],
        PA: [BOLD],
        b0: [DWI],
    }


def test_a_fieldmap_meant_for_an_image_wins_over_one_for_any():
    """A b0 for the DWI acquired after it: the DWI takes it, not the BOLD's pair before."""
    b0 = "fmap/sub-01_acq-dwi_dir-PA_epi"
    assert corrected((AP, 1), (PA, 2), (BOLD, 3), (DWI, 4), (b0, 5)) == {
        AP: [BOLD],
        PA: [BOLD],
        b0: [DWI],
    }


def test_a_rule_keeps_a_fieldmap_for_the_dwi():
    """The same b0 named acq-b0: another set, the latest before both images, so the pair
    corrects nothing; ``set.corrects`` gives the pair back to the BOLD."""
    b0 = "fmap/sub-01_acq-b0_dir-PA_epi"
    assert corrected((AP, 1), (PA, 2), (b0, 3), (BOLD, 4), (DWI, 5)) == {
        AP: [],
        PA: [],
        b0: [DWI, BOLD],
    }
    assert corrected((AP, 1), (PA, 2), (b0, 3, ("dwi",)), (BOLD, 4), (DWI, 5)) == {
        AP: [BOLD],
        PA: [BOLD],
        b0: [DWI],
    }


def test_a_fieldmap_that_corrects_nothing_is_passed_over():
    """``set.corrects = []``: the BOLD after it takes the set before."""
    other = "fmap/sub-01_acq-other_dir-AP_epi"
    assert corrected((AP, 1), (PA, 2), (BOLD, 3), (other, 4, ()), (BOLD2, 5)) == {
        AP: [BOLD, BOLD2],
        PA: [BOLD, BOLD2],
        other: [],
    }


def test_m0_scans_correct_asl_and_b1_maps_take_no_part():
    """An M0 scan is linked to the ASL image apart from the B0 fieldmaps: the ASL image
    gets both, and neither takes the other's place."""
    m0, asl, b1 = "fmap/sub-01_m0scan", "perf/sub-01_asl", "fmap/sub-01_TB1TFL"
    assert corrected((AP, 1), (PA, 2), (m0, 3), (asl, 4), (b1, 5), (T1W, 6), (BOLD, 7)) == {
        AP: [BOLD, asl],
        PA: [BOLD, asl],
        m0: [asl],
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
    """Acquisitions stamped with the same minute keep the scanner's series order (as
    numbers: series 9 before series 10)."""
    assert corrected((PA, 1), (BOLD, 1), (AP, 1), numbers=[9, 10, 11]) == {PA: [BOLD], AP: []}
    assert corrected((PA, 1), (BOLD, 1), (AP, 1), numbers=[11, 10, 9]) == {AP: [BOLD], PA: []}


def test_the_order_spans_midnight_and_puts_untimed_series_last():
    late, early = ("20260101", "235800.000000"), ("20260102", "000100.000000")
    after = ("20260102", "000500.000000")
    assert corrected((AP, late), (PA, early), (BOLD, after)) == {AP: [BOLD], PA: [BOLD]}
    # a pair without acquisition time comes after the timed one, not before the BOLD
    assert corrected((BOLD, 1), (AP, 5), (PA, 6), (AP2, None), (PA2, None)) == {
        AP: [BOLD],
        PA: [BOLD],
        AP2: [],
        PA2: [],
    }


def test_a_set_that_corrects_no_image_is_said_once_with_why():
    """One note per set, naming its sidecars and why; none when a rule said it corrects
    nothing."""
    b0, other = "fmap/sub-01_acq-b0_dir-PA_epi", "fmap/sub-01_acq-other_dir-AP_epi"

    def notes(*acquisitions: tuple) -> list[tuple[str, str]]:
        images = [acquisition(n, *a) for n, a in enumerate(acquisitions, start=1)]
        found = link_fieldmaps(images, "01", None).notes
        assert all(n.stage == "convert" and not n.fatal for n in found)
        assert all(n.reason.endswith("set.corrects says which images a fieldmap corrects")
                   for n in found)  # fmt: skip
        return [(n.where, n.reason.split("), ")[0] + ")") for n in found]

    assert notes((AP, 1), (PA, 2), (b0, 3), (other, 4, ()), (BOLD, 5)) == [
        (
            "1.2.3.1",
            "sub-01_dir-AP_epi.json, sub-01_dir-PA_epi.json: corrects no image "
            "(each func/dwi/perf image takes a nearer set of fieldmaps)",
        )
    ]
    assert notes((AP, 1), (T1W, 2)) == [
        ("1.2.3.1", "sub-01_dir-AP_epi.json: corrects no image (no func/dwi/perf image was converted)")
    ]  # fmt: skip
    dwi_b0 = "fmap/sub-01_acq-dwi_dir-PA_epi"
    assert notes((dwi_b0, 1), (BOLD, 2)) == [
        ("1.2.3.1", "sub-01_acq-dwi_dir-PA_epi.json: corrects no image (no dwi image was converted)")
    ]  # fmt: skip
    assert notes((MAG, 1), (PHASEDIFF, 1), (BOLD, 2)) == []


def test_fieldmaps_correct_images_of_their_own_study_only():
    """A packet may hold the exams of two scanners or two people (one StudyInstanceUID
    each): a pair of one study never names the BOLD of the other, even when it is the only
    pair before it; the note says why."""
    assert corrected((AP, 1, None, "1.9.1"), (PA, 2, None, "1.9.1"), (BOLD, 3, None, "1.9.2")) == {
        "fmap/sub-01_dir-AP_epi": [],
        "fmap/sub-01_dir-PA_epi": [],
    }
    images = [
        acquisition(n, *a)
        for n, a in enumerate(
            [(AP, 1, None, "1.9.1"), (PA, 2, None, "1.9.1"), (BOLD, 3, None, "1.9.2")], start=1
        )
    ]
    (note,) = link_fieldmaps(images, "01", None).notes
    assert "(no func/dwi/perf image of its DICOM study was converted)" in note.reason
    # each study's pair corrects its own BOLD, though the other study's pair is nearer
    b_ap, b_pa = "fmap/sub-01_acq-b_dir-AP_epi", "fmap/sub-01_acq-b_dir-PA_epi"
    bold_b = "func/sub-01_task-rest_run-2_bold"
    assert corrected(
        (AP, 1, None, "1.9.1"),
        (PA, 2, None, "1.9.1"),
        (b_ap, 3, None, "1.9.2"),
        (b_pa, 4, None, "1.9.2"),
        (BOLD, 5, None, "1.9.1"),
        (bold_b, 6, None, "1.9.2"),
    ) == {
        "fmap/sub-01_dir-AP_epi": [BOLD],
        "fmap/sub-01_dir-PA_epi": [BOLD],
        b_ap: [bold_b],
        b_pa: [bold_b],
    }


def test_a_session_of_several_studies_gets_a_note():
    from bidsport.participant import several_studies_note

    one = [acquisition(1, AP, 1, None, "1.9.1")[0], acquisition(2, BOLD, 2, None, "1.9.1")[0]]
    assert several_studies_note(one, "P01") is None
    two = [*one, acquisition(3, BOLD2, 3, None, "1.9.2")[0]]
    note = several_studies_note(two, "P01")
    assert note is not None and note.where == "P01" and not note.fatal
    assert note.reason.startswith("the session's series come from 2 DICOM studies: when")


def test_an_asl_m0_scan_in_perf_gets_intendedfor_end_to_end(tmp_path: Path) -> None:
    """Siemens pCASL: the classifier names the M0 scan ``perf/m0scan``; BIDS requires its
    IntendedFor (the ASL images it calibrates), so dcm2niix's outputs of synthetic DICOM
    series get it, and an EPI pair acquired before corrects the ASL image, not the M0."""
    from bidsport.cli.run import main
    from bidsport.synthetic import SeriesSpec, Study, Subject, write_series
    from bidsport.validator import find_validator, run_validator

    epi = {"scanning_sequence": ("EP",), "mr_acquisition_type": "2D", "echo_time": 20.0}
    asl = {**epi, "sequence_name": "tgse_pcasl", "repetition_time": 4000.0}
    fmap = {**epi, "sequence_name": "epse2d1_64", "repetition_time": 8000.0}
    packet = tmp_path / "inbox" / "P"
    for spec in (
        SeriesSpec("fmap-SE_dir-AP", 1, **fmap, acquisition_time="085800.000000"),
        SeriesSpec("fmap-SE_dir-PA", 2, **fmap, acquisition_time="085900.000000"),
        SeriesSpec("pcasl_M0", 3, **asl, acquisition_time="090000.000000"),
        SeriesSpec("tgse_pcasl_PLD1800", 4, n_volumes=4, **asl, acquisition_time="090100.000000"),
    ):
        write_series(spec, packet / f"S{spec.series_number}", Subject(), Study(key="asl"))
    out = tmp_path / "bids"
    assert main([str(tmp_path / "inbox"), str(out), "participant", "-q"]) == 0
    sub = out / "sub-P"
    asl_uri = "bids::sub-P/perf/sub-P_asl.nii.gz"
    m0 = json.loads((sub / "perf" / "sub-P_m0scan.json").read_text())
    assert m0["IntendedFor"] == [asl_uri]
    for direction in ("AP", "PA"):
        pair = json.loads((sub / "fmap" / f"sub-P_dir-{direction}_epi.json").read_text())
        assert pair["IntendedFor"] == [asl_uri]  # the M0 scan is not an image it corrects
    validator = find_validator()
    if validator is not None:
        assert main([str(tmp_path / "inbox"), str(out), "group", "-q", "--skip-validation"]) == 0
        result = run_validator(out, command=validator)
        assert result.ran
        about_m0 = [
            e.describe()
            for e in result.errors
            if "m0scan" in e.describe() and "IntendedFor" in e.describe()
        ]
        assert about_m0 == []
