"""The group report: PNG encoder, thumbnails, HTML, and the page rendered in Chromium."""

from __future__ import annotations

import dataclasses
import fcntl
import html
import io
import json
import os
import shutil
import struct
import sys
import time
import zlib
from html.parser import HTMLParser
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bidsport import htmlreport, reportworkers, thumbnails
from bidsport.cli.run import main
from bidsport.fileops import read_tsv
from bidsport.htmlreport import (
    SHOWN_LOCATIONS,
    THUMBNAIL_DIR,
    ImagePreview,
    SeriesEntry,
    SessionReport,
    Thumbnail,
    build_html,
    series_row,
    thumbnail_relpath,
    write_report,
)
from bidsport.layout import DatasetLayout
from bidsport.png import size as png_size
from bidsport.reportworkers import images_to_preview, sessions_since_report, thumbnail_workers
from bidsport.runner import run_command
from bidsport.status import INTERRUPTED, StatusRow, read_status
from bidsport.synthetic import Study, Subject, typical_session, write_series
from bidsport.thumbnails import encode_png, montage, resample, to_ras
from bidsport.validator import Issue, ValidationResult

PIL_Image = pytest.importorskip("PIL.Image", reason="pillow (a dependency of highdicom) decodes")

#: A series description (free text, at most 64 characters in DICOM) that must be escaped.
HOSTILE = 't2_spc <script>alert("x")</script> & <b>'
UPDATED = "2024-01-02T09:00:00+00:00"


def _decode(data: bytes) -> np.ndarray:
    image = PIL_Image.open(io.BytesIO(data))
    assert image.mode == "L"
    return np.asarray(image)


def thumbnail_png(path: Path, box: int = thumbnails.THUMBNAIL_SIZE) -> bytes:
    """A thumbnail as the report makes it (with the report's Software text)."""
    return thumbnails.thumbnail_png(path, box, software=htmlreport.THUMBNAIL_SOFTWARE)


def _filter_types(data: bytes) -> set[int]:
    """The filter type bytes of every scanline of a single-IDAT grayscale PNG."""
    width, height = png_size(data) or (0, 0)
    length = struct.unpack(">I", data[33:37])[0]
    assert data[37:41] == b"IDAT"
    raw = zlib.decompress(data[41 : 41 + length])
    return {raw[row * (width + 1)] for row in range(height)}


# --------------------------------------------------------------------------- PNG


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (9, 1), (37, 53), (128, 388)])
def test_png_round_trips_through_an_independent_decoder(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    for pixels in (
        rng.integers(0, 256, shape, dtype=np.uint8),  # noise
        ((rows * 7 + cols * 3) % 256).astype(np.uint8),  # gradients
        np.full(shape, 255, np.uint8),
        ((rows // 3 + cols // 5) % 2 * 255).astype(np.uint8),  # blocks
    ):
        data = encode_png(pixels)
        assert png_size(data) == (shape[1], shape[0])
        assert np.array_equal(_decode(data), pixels)


def test_png_filters_every_row_with_paeth_and_compresses_smooth_pictures() -> None:
    rows, cols = np.mgrid[0:64, 0:96]
    smooth = ((rows * 2 + cols) % 256).astype(np.uint8)
    rng = np.random.default_rng(1)
    mixed = np.vstack(
        [
            smooth,
            np.tile(np.arange(96, dtype=np.uint8) * 2, (8, 1)),
            rng.integers(0, 256, (8, 96), dtype=np.uint8),
            np.tile((np.arange(8, dtype=np.uint8) * 30)[:, None], (1, 96)),
            (np.add.outer(np.arange(8), np.arange(96)) * 5 % 256).astype(np.uint8),
        ]
    )
    data = encode_png(mixed)
    assert np.array_equal(_decode(data), mixed)
    assert _filter_types(data) == {thumbnails.PAETH}
    assert len(encode_png(smooth)) < smooth.size / 10


def test_png_refuses_what_it_cannot_encode() -> None:
    for bad in (
        np.zeros((2, 2), np.uint16),
        np.zeros((2, 2, 3), np.uint8),
        np.zeros((0, 4), np.uint8),
    ):
        with pytest.raises(ValueError, match="2-D uint8"):
            encode_png(bad)
    assert png_size(b"GIF89a" + bytes(30)) is None


# --------------------------------------------------------------------------- thumbnails


def test_resample_keeps_values_and_averages_when_shrinking() -> None:
    plane = np.arange(12.0).reshape(3, 4)
    assert np.allclose(resample(plane, (3, 4)), plane)
    assert resample(np.ones((500, 300)), (128, 77)).shape == (128, 77)
    assert np.allclose(resample(np.full((7, 5), 3.0), (20, 11)), 3.0)
    # a one-pixel line survives a 4x reduction as a quarter of its brightness
    line = np.zeros((64, 64))
    line[:, 33] = 4.0
    assert np.isclose(resample(line, (16, 16)).max(), 1.0)


def _marked_volume() -> tuple[np.ndarray, np.ndarray]:
    """A RAS volume (2 x 2 x 3 mm) with one bright blob in each middle plane.

    Each blob lies towards the top right of its plane as displayed: anterior-superior in
    the sagittal plane, right-superior in the coronal, right-anterior in the axial.
    """
    nx, ny, nz = 20, 24, 16
    x, y, z = np.mgrid[0:nx, 0:ny, 0:nz]
    volume = (100 + x + y + z).astype(np.float32)
    volume[nx // 2, 18:23, 12:16] = 1000  # sagittal plane
    volume[15:19, ny // 2, 12:16] = 1000  # coronal plane
    volume[15:19, 18:23, nz // 2] = 1000  # axial plane
    return volume, np.diag([2.0, 2.0, 3.0, 1.0])


def _panels(picture: np.ndarray, widths: list[int]) -> list[np.ndarray]:
    panels, column = [], 0
    for width in widths:
        panels.append(picture[:, column : column + width])
        column += width + thumbnails.PANEL_GAP
    return panels


def test_thumbnail_planes_are_oriented_and_scaled() -> None:
    volume, affine = _marked_volume()
    ras, sizes = to_ras(volume, affine)
    assert sizes == (2.0, 2.0, 3.0)
    picture = montage(ras, sizes, box=128)
    # field of view 40 x 48 x 48 mm: 48 mm is 128 pixels, 40 mm 107
    assert picture.shape == (128, 128 + 107 + 107 + 2 * thumbnails.PANEL_GAP)
    assert (picture[:, 128 : 128 + thumbnails.PANEL_GAP] == thumbnails.GAP_VALUE).all()
    for name, panel in zip(
        ("sagittal", "coronal", "axial"), _panels(picture, [128, 107, 107]), strict=True
    ):
        rows, cols = np.nonzero(panel > 200)
        assert rows.size, name
        assert rows.mean() < panel.shape[0] / 2, f"{name}: blob not in the upper half"
        assert cols.mean() > panel.shape[1] / 2, f"{name}: blob not in the right half"
        assert np.median(panel) < 100, f"{name}: background not dark"


def test_thumbnail_ignores_storage_order_and_later_volumes(tmp_path: Path) -> None:
    volume, affine = _marked_volume()
    image = nib.Nifti1Image(volume, affine)
    nib.save(image, tmp_path / "ras.nii.gz")
    target = nib.orientations.axcodes2ornt(("P", "S", "L"))
    transform = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine), target)
    stored = image.as_reoriented(transform)
    assert nib.aff2axcodes(stored.affine) == ("P", "S", "L")
    nib.save(stored, tmp_path / "psl.nii")
    four_d = np.stack([volume, np.full_like(volume, 5000), np.zeros_like(volume)], axis=-1)
    nib.save(nib.Nifti1Image(four_d, affine), tmp_path / "bold.nii.gz")

    reference = thumbnail_png(tmp_path / "ras.nii.gz")
    assert PIL_Image.open(io.BytesIO(reference)).info["Software"] == htmlreport.THUMBNAIL_SOFTWARE
    assert thumbnail_png(tmp_path / "psl.nii") == reference
    assert thumbnail_png(tmp_path / "bold.nii.gz") == reference


def test_big_images_give_small_thumbnails(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    big = rng.integers(900, 1100, (384, 384, 24), dtype=np.int16)
    nib.save(nib.Nifti1Image(big, np.diag([0.6, 0.6, 5.0, 1.0])), tmp_path / "big.nii")
    data = thumbnail_png(tmp_path / "big.nii", box=96)
    width, height = png_size(data) or (0, 0)
    assert height <= 96 and width <= 3 * 96 + 2 * thumbnails.PANEL_GAP
    assert len(data) < 60_000
    constant = np.zeros((4, 4, 4), np.int16)
    nib.save(nib.Nifti1Image(constant, np.eye(4)), tmp_path / "zeros.nii")
    assert (_decode(thumbnail_png(tmp_path / "zeros.nii")) != thumbnails.GAP_VALUE).any()


# --------------------------------------------------------------------------- HTML


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str, str | None]] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            self.attrs.append((tag, name, value))
            if name == "id" and value:
                self.ids.add(value)


def _series(description: str, outputs: str, excluded: str = "n/a") -> dict[str, str]:
    return {
        "series_id": "1.2.3", "series_number": "2", "series_description": description,
        "protocol_name": description, "n_files": "6", "n_volumes": "1",
        "acq_time": "2024-01-02T09:01:00", "datatype": "anat", "suffix": "T2w",
        "entities": "acq-x", "run": "n/a", "provenance": "raw", "outputs": outputs,
        "excluded": excluded, "review": "true", "rule": "n/a",
        "evidence": "description word 't2' → T2w | TE 410 ms → T2w",
    }  # fmt: skip


def test_html_escapes_everything_and_refers_to_nothing_outside() -> None:
    row = StatusRow("01", "1", 'pk"<b>', True, True, False, "dcm2niix said <oops> & left", UPDATED)
    entry = SeriesEntry(
        series_row(_series(HOSTILE, "anat/sub-01_ses-1_acq-x_T2w.nii.gz;anat/a&b.json")),
        (
            ImagePreview(
                "anat/sub-01_ses-1_acq-x_T2w.nii.gz",
                Thumbnail("thumbnails/sub-01/ses-1/anat/sub-01_ses-1_acq-x_T2w.png", 346, 128),
            ),
            ImagePreview('anat/a&b.json" onerror="alert(1)', note="no preview <none>"),
        ),
    )
    page = build_html(
        "Study <&>",
        [SessionReport(row, (entry,)), SessionReport(StatusRow("02", None, None, False, False,
                                                               False, None, UPDATED))],
    )  # fmt: skip
    assert "<script" not in page and "<img src=x" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;b&gt;" in page
    assert "Study &lt;&amp;&gt;" in page and "dcm2niix said &lt;oops&gt; &amp; left" in page
    assert "pk&quot;&lt;b&gt;" in page and "no preview &lt;none&gt;" in page

    parsed = _Collector()
    parsed.feed(page)
    assert "script" not in parsed.tags and "link" not in parsed.tags
    assert "iframe" not in parsed.tags and "object" not in parsed.tags
    for tag, name, value in parsed.attrs:
        if name in ("src", "href"):
            assert value and ":" not in value and not value.startswith(("/", "..")), value
        if name == "href":
            assert value and value[1:] in parsed.ids, f"dangling anchor {value}"
        assert not name.startswith("on"), (tag, name)
    images = [(n, v) for t, n, v in parsed.attrs if t == "img"]
    assert ("src", "thumbnails/sub-01/ses-1/anat/sub-01_ses-1_acq-x_T2w.png") in images
    assert ("width", "346") in images and ("loading", "lazy") in images
    assert "anat/acq-x_T2w" in page  # the BIDS name the series got
    assert "review" in page and "<details>" in page
    assert "2 participants, 2 sessions: 0 converted, 1 failed" in page
    assert "no series table" not in page  # no note unless given
    assert 'http-equiv="Content-Security-Policy"' in page


def _section(page: str, anchor: str) -> str:
    return page[page.index(f'<section id="{anchor}">') :].split("</section>")[0]


def test_exclusions_failures_interruptions_and_validation() -> None:
    """An expected exclusion is grey, a failed conversion red; a session imported but
    neither converted nor failed is interrupted; the validator's findings per code."""
    failure = "dcm2niix failed on series 6 (3 files, exit 1): no output"
    series = (
        SeriesEntry(series_row(_series("localizer", "", excluded="localizer"))),
        SeriesEntry(series_row(_series("bold", "", excluded=failure))),
        SeriesEntry(series_row(_series("t2", "", excluded="datatype anat in --exclude-datatype"))),
    )
    done = StatusRow("01", "1", "P", True, True, False, "1 series failed: " + failure, UPDATED)
    killed = StatusRow("02", None, "Q", True, False, False, None, UPDATED)
    resumed = StatusRow("03", None, "R", True, True, False, "unfinished: a run began", UPDATED)
    issues = tuple(
        Issue("SIDECAR_KEY_RECOMMENDED", "warning", f"/sub-{i:02d}/anat/x.json", "Coil", "m")
        for i in range(SHOWN_LOCATIONS + 5)
    )
    validation = ValidationResult(
        ran=True,
        errors=(Issue("NOT_INCLUDED", "error", "/sub-01/x<y>.nii", message="not <allowed>"),),
        warnings=issues,
        version="3.0.2",
    )
    page = build_html(
        "t",
        [
            SessionReport(done, series),
            SessionReport(killed, note="n", problem=INTERRUPTED),
            SessionReport(resumed),
        ],
        validation=validation,
        validation_link="validation.json",
    )
    rows = _section(page, "sub-01_ses-1")
    assert '<span class="skipped">not converted: localizer</span>' in rows
    assert '<span class="skipped">not converted: datatype anat in --exclude-datatype</span>' in rows
    assert f'<span class="error">conversion failed: {failure}</span>' in rows
    assert rows.count('<tr class="failed') == 1 and rows.count('<tr class="excluded') == 2
    assert "3 series, 0 converted, 1 failed" in rows
    assert ".badge.partial{" in page and ".badge.expected{" in page and ".skipped{" in page
    assert "in progress" not in page
    assert page.count('class="state">interrupted<') == 2  # sub-02 and sub-03
    assert "3 sessions: 0 converted, 3 failed (2 interrupted), 0 expected" in page
    assert f'<td class="error">{html.escape(INTERRUPTED, quote=True)}</td>' in page
    assert html.escape(INTERRUPTED, quote=True) in _section(page, "sub-02")

    section = page[page.index('<h2 id="validation">') : page.index('<h2 id="sessions">')]
    assert "bids-validator-deno 3.0.2: 1 error, 25 warnings" in section
    assert '<a href="validation.json">validation.json</a>' in section
    assert "/sub-01/x&lt;y&gt;.nii" in section and "not &lt;allowed&gt;" in section
    assert f"/sub-{SHOWN_LOCATIONS - 1:02d}/anat/x.json (Coil)" in section
    assert f"/sub-{SHOWN_LOCATIONS:02d}/anat/x.json" not in section
    assert "+5 more" in section
    assert "<td>m</td>" in section  # one message for every location of the code
    varied = dataclasses.replace(validation, warnings=(*issues, Issue("SIDECAR_KEY_RECOMMENDED",
                                 "warning", "/y.json", "EchoTime", "other")))  # fmt: skip
    assert "differs per location" in build_html("t", [], validation=varied)
    assert "not validated yet" in build_html("t", [])


def test_series_rows_and_thumbnail_paths() -> None:
    row = series_row(_series("t2", "", excluded="derived: dti_map"))
    assert row.outputs == () and row.excluded == "derived: dti_map" and row.review
    assert row.evidence == ("description word 't2' → T2w", "TE 410 ms → T2w")
    assert row.run is None and row.rule is None
    old = series_row({"series_id": "1", "outputs": "anat/x_T1w.nii"})  # an older, narrower table
    assert old.outputs == ("anat/x_T1w.nii",) and old.datatype is None and not old.review
    assert (
        thumbnail_relpath("01", None, "func/sub-01_bold.nii")
        == "thumbnails/sub-01/func/sub-01_bold.png"
    )
    for bad in ("/etc/x.nii.gz", "anat/../../x.nii.gz", "anat/x.json", "anat\\x.nii.gz", ".nii.gz"):
        assert thumbnail_relpath("01", "1", bad) is None, bad


# --------------------------------------------------------------------------- on a dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> DatasetLayout:
    """One subject, two sessions from the participant level; a free-text description."""
    base = tmp_path_factory.mktemp("report")
    specs = typical_session()
    keep = [specs[0], specs[1], dataclasses.replace(specs[2], description=HOSTILE), specs[5],
            specs[7], specs[8], specs[9]]  # fmt: skip
    for visit in ("1", "2"):
        for spec in keep if visit == "1" else keep[:2]:
            folder = base / "inbox" / f"S01_{visit}" / f"S{spec.series_number:02d}"
            write_series(spec, folder, Subject(), Study(key=visit))
    out = base / "bids"
    code = main([str(base / "inbox"), str(out), "participant", "-q", "--n-procs", "1",
                 "--nameformat", r"(?P<subject_id>[^_]+)_(?P<session_name>.+)"])  # fmt: skip
    assert code == 0
    return DatasetLayout(out)


def _copy_of(dataset: DatasetLayout, root: Path) -> DatasetLayout:
    """A copy of the module's dataset at ``root`` (a test may change it)."""
    shutil.copytree(dataset.root, root, symlinks=True)
    return DatasetLayout(root)


def _in_fresh_python(code: str) -> list[str]:
    """The words ``code`` prints, run in a new Python (which has imported nothing yet)."""
    result = run_command([sys.executable, "-c", code], timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def _outputs(layout: DatasetLayout) -> list[tuple[str, str, str]]:
    """(subject, session, output) of every converted image, from the series tables."""
    found = []
    for table in sorted(layout.sourcedata_dir.glob("bidsport/sub-*/ses-*/series.tsv")):
        for row in read_tsv(table):
            for output in row["outputs"].split(";") if row["outputs"] != "n/a" else ():
                found.append((table.parts[-3][4:], table.parts[-2][4:], output))
    return found


def test_report_on_a_dataset(
    tmp_path: Path, dataset: DatasetLayout, caplog, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = _copy_of(dataset, tmp_path / "bids")
    status = read_status(layout)
    outcome = write_report(layout, status, title="Report test", generator="bidsport test")
    assert outcome.report_file == layout.report_file and layout.report_file.is_file()
    outputs = _outputs(layout)
    assert len(outputs) == 6  # T1w T2w bold magnitude1 phasediff; the T1w of session 2
    expected = {
        layout.derivatives_dir / str(thumbnail_relpath(sub, ses, out)) for sub, ses, out in outputs
    }
    assert set(outcome.written) == expected | {layout.report_file}
    page = layout.report_file.read_text(encoding="utf-8")
    for path in expected:
        assert path.relative_to(layout.derivatives_dir).as_posix() in page
        width, height = png_size(path.read_bytes()) or (0, 0)
        assert f'width="{width}" height="{height}"' in page
    assert "&lt;script&gt;" in page and "<script" not in page
    assert page.count('<section id="sub-S01_ses-') == 2
    assert "not converted: localizer" in page and "derived: dti_map" in page
    assert str(layout.root) not in page  # nothing absolute: the dataset can move

    again = write_report(layout, status, title="Report test", generator="bidsport test")
    assert again.written == () and again.removed == ()

    # an image converted again to the same content (a newer image, --overwrite): its
    # thumbnail is made once, is not rewritten, and is then current
    sub, ses, out = outputs[0]
    image = layout.session_dir(sub, ses) / out
    thumb = layout.derivatives_dir / str(thumbnail_relpath(sub, ses, out))
    now = time.time_ns()
    os.utime(thumb, ns=(now - 100 * 10**9,) * 2)
    os.utime(image, ns=(now - 50 * 10**9,) * 2)
    remade = write_report(layout, status, title="Report test", generator="bidsport test")
    assert remade.written == ()
    with monkeypatch.context() as patch:
        patch.setattr(
            htmlreport, "make_thumbnail", lambda image: pytest.fail(f"made {image} again")
        )
        quiet = write_report(layout, status, title="Report test", generator="bidsport test")
        assert quiet.written == ()

    # a thumbnail from another bidsport version (no mark) is made again, even when newer
    stale = sorted(expected)[0]
    good = stale.read_bytes()
    stale.write_bytes(encode_png(np.zeros((4, 4), np.uint8)))
    redo = write_report(layout, status, title="Report test", generator="bidsport test")
    assert redo.written == (stale,)  # the page refers to it as before
    assert stale.read_bytes() == good

    # a session cleaned away: its thumbnails go; a corrupt image: a note, no crash
    shutil.rmtree(layout.session_dir("S01", "2"))
    (layout.sourcedata_dir / "bidsport/sub-S01/ses-2/series.tsv").unlink()
    t1w = layout.session_dir("S01", "1") / "anat/sub-S01_ses-1_T1w.nii.gz"
    t1w.write_bytes(b"\x1f\x8b not really gzip")
    third = write_report(layout, status, title="Report test", generator="bidsport test")
    assert {p.relative_to(layout.derivatives_dir).parts[2] for p in third.removed} == {"ses-2"}
    assert not (layout.derivatives_dir / "thumbnails/sub-S01/ses-2").exists()
    page = layout.report_file.read_text(encoding="utf-8")
    assert "no preview:" in page
    assert "no series table: the last run of this session ended before writing one" in page
    assert any("no thumbnail for" in r.getMessage() for r in caplog.records)


def test_thumbnails_made_in_worker_processes_are_the_same(
    tmp_path: Path, dataset: DatasetLayout, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(htmlreport, "_PARALLEL_FROM", 2)  # the fixture has 6 images
    pages = []
    for n_procs in (1, 2):
        layout = _copy_of(dataset, tmp_path / f"bids{n_procs}")
        outcome = write_report(layout, read_status(layout), title="t", n_procs=n_procs)
        pngs = sorted(p for p in outcome.written if p.suffix == ".png")
        assert len(pngs) == 6
        pages.append(
            (
                layout.report_file.read_text(encoding="utf-8"),
                [(p.relative_to(layout.root), p.read_bytes()) for p in pngs],
            )
        )
    assert pages[0] == pages[1]


def test_report_with_current_thumbnails_imports_no_image_library(
    tmp_path: Path, dataset: DatasetLayout
) -> None:
    """Re-writing the report (thumbnails up to date) loads neither numpy nor nibabel
    (~0.2 s of a group run); making a missing thumbnail does, without pydicom."""
    layout = _copy_of(dataset, tmp_path / "bids")
    probe = (
        "import sys\n"
        "from bidsport.htmlreport import write_report\n"
        "from pathlib import Path\n"
        "from bidsport.layout import DatasetLayout\n"
        "from bidsport.status import read_status\n"
        f"layout = DatasetLayout(Path({str(layout.root)!r}))\n"
        "outcome = write_report(layout, read_status(layout), title='t')\n"
        "print(len(outcome.written), *(m in sys.modules for m in ('numpy', 'nibabel', 'pydicom')))\n"
    )
    # 6 thumbnails and the page; nibabel without pydicom (bidsport.niftiio)
    assert _in_fresh_python(probe) == ["7", "True", "True", "False"]
    assert _in_fresh_python(probe) == ["0", "False", "False", "False"]


def test_thumbnail_workers_start_when_sessions_changed_since_the_report(
    tmp_path: Path, dataset: DatasetLayout, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reportworkers, "usable_cpus", lambda: 2)  # whatever runs the tests
    layout = _copy_of(dataset, tmp_path / "bids")
    # no report yet: both sessions, 5 + 1 images
    assert [p.name for p in sessions_since_report(layout)] == [
        "sub-S01_ses-1.json",
        "sub-S01_ses-2.json",
    ]
    assert images_to_preview(layout, 100) == 6 and images_to_preview(layout, 4) == 4
    with thumbnail_workers(layout, 1) as pool:
        assert pool is None  # one process: nothing to overlap
    with monkeypatch.context() as one_cpu:
        one_cpu.setattr(reportworkers, "usable_cpus", lambda: 1)
        with thumbnail_workers(layout, 2) as pool:
            assert pool is None  # a batch job given one core: nothing to overlap either
    with thumbnail_workers(layout, 2) as pool:
        assert pool is not None and pool.workers == 1  # 6 images
    with monkeypatch.context() as four:
        four.setattr(reportworkers, "IMAGES_PER_WORKER", 2)
        with thumbnail_workers(layout, 4) as pool:
            assert pool is not None and pool.workers == 2  # 4 images counted: 2 CPUs
    lock = layout.lock_file("S01", "3")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a participant job converts a session
        assert reportworkers.sessions_in_progress(layout)
        with thumbnail_workers(layout, 2) as pool:
            assert pool is None  # the group level will refuse to run
    assert not reportworkers.sessions_in_progress(layout)
    write_report(layout, read_status(layout), title="t")
    assert sessions_since_report(layout) == [] and images_to_preview(layout, 100) == 0
    with thumbnail_workers(layout, 2) as pool:
        assert pool is None
    record = layout.status_row_file("S01", "2")
    later = layout.report_file.stat().st_mtime_ns + 10**9
    os.utime(record, ns=(later, later))  # a participant run recorded session 2 again
    assert sessions_since_report(layout) == [record] and images_to_preview(layout, 100) == 1
    record.write_text("{not json", encoding="utf-8")
    os.utime(record, ns=(later, later))
    assert images_to_preview(layout, 100) == 0
    assert sessions_since_report(DatasetLayout(tmp_path / "nothing")) == []


def test_too_few_early_workers_give_way_to_enough(
    tmp_path: Path, dataset: DatasetLayout, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The early workers are counted from a guess: when the thumbnails to make are worth
    more workers (e.g. every thumbnail deleted), they are shut down and enough started."""
    monkeypatch.setattr(htmlreport, "_PARALLEL_FROM", 2)  # 6 images: worth 2 workers
    monkeypatch.setattr(reportworkers, "usable_cpus", lambda: 2)
    layout = _copy_of(dataset, tmp_path / "bids")
    with thumbnail_workers(layout, 2) as pool:
        assert pool is not None and pool.workers == 1
        prepared = htmlreport.prepare_report(layout, read_status(layout), 2, pool)
        with pytest.raises(RuntimeError):  # shut down
            pool.executor.submit(int)
    assert len([p for p in prepared.written if p.suffix == ".png"]) == 6


def test_thumbnails_are_made_by_the_workers_started_first(
    tmp_path: Path, dataset: DatasetLayout
) -> None:
    """The report made with workers started before it (as the command line does) is the
    same, and the process that writes it loads no image library: its workers do."""
    layout = _copy_of(dataset, tmp_path / "bids")
    probe = (
        "import sys\n"
        "from pathlib import Path\n"
        "from bidsport.layout import DatasetLayout\n"
        "from bidsport import reportworkers\n"
        "reportworkers.usable_cpus = lambda: 2  # whatever runs the tests\n"
        "def loaded():\n"
        "    return 'numpy' in sys.modules and 'nibabel' in sys.modules\n"
        "def report_modules():\n"
        "    return 'bidsport.htmlreport' in sys.modules or 'bidsport.status' in sys.modules\n"
        f"layout = DatasetLayout(Path({str(layout.root)!r}))\n"
        "with reportworkers.thumbnail_workers(layout, 2) as pool:\n"
        "    warm = pool.executor.submit(loaded).result()\n"
        "    assert not pool.executor.submit(report_modules).result()  # the worker: no report module\n"
        "    from bidsport.htmlreport import prepare_report, write_page\n"
        "    from bidsport.status import read_status\n"
        "    prepared = prepare_report(layout, read_status(layout), 2, pool)\n"
        "    outcome = write_page(layout, prepared, title='t')\n"
        "print(warm, len(outcome.written), 'numpy' in sys.modules)\n"
    )
    assert _in_fresh_python(probe) == ["True", "7", "False"]
    made = sorted(layout.derivatives_dir.rglob("*.png"))
    page = layout.report_file.read_text(encoding="utf-8")

    alone = DatasetLayout(tmp_path / "alone")
    shutil.copytree(dataset.root, alone.root, symlinks=True)
    write_report(alone, read_status(alone), title="t")
    assert page == alone.report_file.read_text(encoding="utf-8")
    assert [(p.relative_to(layout.root), p.read_bytes()) for p in made] == [
        (p.relative_to(alone.root), p.read_bytes())
        for p in sorted(alone.derivatives_dir.rglob("*.png"))
    ]


def test_group_command_makes_thumbnails_in_its_early_workers(
    tmp_path: Path, dataset: DatasetLayout
) -> None:
    layout = _copy_of(dataset, tmp_path / "bids")
    probe = (
        "import sys\n"
        "from bidsport import reportworkers\n"
        "reportworkers.usable_cpus = lambda: 2  # whatever runs the tests\n"
        "from bidsport.cli.run import main\n"
        f"code = main([{str(tmp_path / 'inbox')!r}, {str(layout.root)!r}, 'group', '-q',\n"
        "             '--skip-validation', '--n-procs', '2'])\n"
        "print(code, 'numpy' in sys.modules)\n"
    )
    assert _in_fresh_python(probe) == ["0", "False"]
    assert len(list((layout.derivatives_dir / THUMBNAIL_DIR).rglob("*.png"))) == 6


# --------------------------------------------------------------------------- Chromium

CHECK_PAGE = """<!DOCTYPE html><html><body><pre id="result">pending</pre>
<iframe id="report" src="REPORT_URL" style="width:1200px;height:800px"></iframe>
<script>
const out = document.getElementById("result");
document.getElementById("report").addEventListener("load", (event) => {
  let doc;
  try { doc = event.target.contentDocument; } catch (error) { doc = null; }
  if (!doc) { out.textContent = "no access to the report's document"; return; }
  const images = Array.from(doc.images);
  for (const img of images) img.loading = "eager";
  let tries = 0;
  const check = () => {
    tries += 1;
    if (images.some((img) => !img.complete) && tries < 200) { setTimeout(check, 50); return; }
    out.textContent = JSON.stringify({
      total: images.length,
      loaded: images.filter((img) => img.complete && img.naturalWidth > 0).length,
      broken: images.filter((img) => !(img.naturalWidth > 0)).map((img) => img.getAttribute("src")),
      scripts: doc.scripts.length,
      sections: doc.querySelectorAll("section").length,
    });
  };
  check();
});
</script></body></html>
"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("chromium is not installed (Debian: apt-get install chromium): report not rendered")


def _render(chromium: str, report: Path, work: Path) -> dict[str, object]:
    """Load the report in headless Chromium (in a frame of a checking page) and count images."""
    check = work / "check.html"
    check.write_text(CHECK_PAGE.replace("REPORT_URL", report.as_uri()), encoding="utf-8")
    result = run_command(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={work / 'profile'}",
         "--allow-file-access-from-files", "--virtual-time-budget=15000", "--dump-dom",
         check.as_uri()],
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    start = result.stdout.find('<pre id="result">')
    assert start >= 0, result.stdout[-2000:]
    text = result.stdout[start + len('<pre id="result">') :].split("</pre>", 1)[0]
    assert text.startswith("{"), f"the checking page said: {text}"
    return dict(json.loads(text))


def test_report_renders_in_chromium(tmp_path: Path, dataset: DatasetLayout) -> None:
    chromium = _chromium()
    layout = _copy_of(dataset, tmp_path / "bids")
    write_report(layout, read_status(layout), title="Chromium test")
    n_images = len(_outputs(layout))

    seen = _render(chromium, layout.report_file, tmp_path)
    assert seen == {"total": n_images, "loaded": n_images, "broken": [], "scripts": 0,
                    "sections": 2}  # fmt: skip

    # the check can fail: a missing thumbnail is seen as a broken image
    gone = next((layout.derivatives_dir / "thumbnails").rglob("*_T2w.png"))
    gone.unlink()
    seen = _render(chromium, layout.report_file, tmp_path)
    assert seen["loaded"] == n_images - 1
    assert seen["broken"] == [gone.relative_to(layout.derivatives_dir).as_posix()]
