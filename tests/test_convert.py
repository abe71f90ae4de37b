from __future__ import annotations

import dataclasses
import errno
import gzip
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import pytest

from bidsport import convert
from bidsport.convert import (
    BatchItem,
    build_dcm2niix_args,
    collect_outputs,
    convert_batch,
    convert_series,
    dcm2niix_binary,
    dcm2niix_version,
)
from bidsport.errors import ConversionError
from bidsport.header import read_header
from bidsport.synthetic import SeriesSpec, Subject, typical_session, write_series


def test_binary_is_the_pinned_wheel_not_path():
    import dcm2niix  # type: ignore[import-untyped]

    assert dcm2niix_binary() == Path(dcm2niix.bin)
    assert dcm2niix_version().startswith("v1.0.2026")
    # the version recorded is the wheel's, even if another dcm2niix is on PATH
    other = shutil.which("dcm2niix")
    if other and Path(other).resolve() != dcm2niix_binary().resolve():
        assert dcm2niix_version(dcm2niix_binary()) == dcm2niix_version()


def test_args_are_one_series_and_never_grow_with_files(tmp_path):
    args = build_dcm2niix_args(Path("/bin/d"), tmp_path / "in", tmp_path / "out", "x", level=4)
    assert args[0] == "/bin/d" and args[-1] == str(tmp_path / "in")
    assert "-4" in args and args[args.index("-z") + 1] == "y"
    assert args[args.index("-ba") + 1] == "y"
    plain = build_dcm2niix_args(Path("/bin/d"), tmp_path, tmp_path, "x", compress=False)
    assert plain[plain.index("-z") + 1] == "n"


def test_converts_a_4d_bold_series(tmp_path):
    spec = next(s for s in typical_session() if s.description == "rfMRI_REST_AP")
    files = write_series(spec, tmp_path / "dicom")
    result = convert_series("bold", files, tmp_path / "work")
    assert len(result.outputs) == 1
    out = result.outputs[0]
    assert out.postfix == ""
    img = nib.load(out.image)
    assert img.shape == (16, 16, 6, 5)
    sidecar = json.loads(out.sidecar.read_text())
    assert sidecar["RepetitionTime"] == pytest.approx(0.8)


@pytest.mark.parametrize("charset", ["ISO_IR 192", "ISO_IR 100"])
def test_the_text_of_a_utf8_file_is_read_back_as_written(tmp_path, charset):
    """dcm2niix writes the text of a UTF-8 file encoded twice (``MÃ¼ller``); the sidecar
    bidsport reads has it as the scanner wrote it, as it has a Latin-1 file's."""
    spec = next(s for s in typical_session() if s.description == "t2_flair_tra")
    files = write_series(
        dataclasses.replace(spec, description="flair Müller-Lüdenscheidt", n_slices=2),
        tmp_path / "dicom",
        Subject(extra={"SpecificCharacterSet": charset}),
    )
    result = convert_series("t1", files, tmp_path / "work")
    assert result.outputs[0].sidecar is not None
    sidecar = convert.load_sidecar(result.outputs[0].sidecar)
    assert sidecar["SeriesDescription"] == "flair Müller-Lüdenscheidt"


def test_dwi_gets_bval_bvec(tmp_path):
    spec = next(s for s in typical_session() if s.description == "dMRI_dir6_AP")
    files = write_series(spec, tmp_path / "dicom")
    out = convert_series("dwi", files, tmp_path / "work", compress=False).outputs[0]
    assert out.image.name.endswith(".nii")
    assert out.bval.read_text().split() == ["0", "1000", "1000", "1000", "1000", "1000", "1000"]
    assert len(out.bvec.read_text().splitlines()) == 3


def _gzip_header(path: Path) -> tuple[int, int]:
    """(FLG, MTIME) of a gzip member's header."""
    head = path.read_bytes()[:10]
    assert head[:2] == b"\x1f\x8b"
    return head[3], int.from_bytes(head[4:8], "little")


def test_fast_levels_are_gzipped_by_bidsport_with_the_same_voxels(tmp_path, monkeypatch):
    spec = next(s for s in typical_session() if s.description == "rfMRI_REST_AP")
    files = write_series(spec, tmp_path / "dicom")
    gzipped = []
    real_gzip = convert.gzip_image
    monkeypatch.setattr(convert, "gzip_image", lambda p, lv: gzipped.append(lv) or real_gzip(p, lv))
    plain = convert_series("bold", files, tmp_path / "plain", compress=False).outputs[0]
    fast = convert_series("bold", files, tmp_path / "fast", level=2).outputs[0]
    again = convert_series("bold", files, tmp_path / "again", level=2).outputs[0]
    assert fast.image.name == "series.nii.gz" and gzipped == [2, 2]
    assert [p.name for p in fast.image.parent.glob("*.nii")] == []  # the .nii is replaced
    assert _gzip_header(fast.image) == (0, 0)  # no file name, no time
    assert fast.image.read_bytes() == again.image.read_bytes()  # the same bytes every run
    assert gzip.decompress(fast.image.read_bytes()) == plain.image.read_bytes()
    assert fast.image.stat().st_size < plain.image.stat().st_size
    assert fast.sidecar.read_bytes() == plain.sidecar.read_bytes()


def test_high_levels_are_gzipped_by_dcm2niix(tmp_path, monkeypatch):
    spec = next(s for s in typical_session() if s.description == "rfMRI_REST_AP")
    files = write_series(spec, tmp_path / "dicom")
    called = []
    monkeypatch.setattr(convert, "gzip_image", lambda *a: called.append(a))
    out = convert_series("bold", files, tmp_path / "work", level=6).outputs[0]
    assert out.image.name == "series.nii.gz" and called == []
    assert nib.load(out.image).shape == (16, 16, 6, 5)


def test_gzip_outputs_gzips_what_dcm2niix_left_uncompressed(tmp_path):
    """At levels 4-9 dcm2niix gzips, except images too large for its gzip (4 GiB): those
    come back as .nii and are gzipped by bidsport, at ISA-L's highest level (3)."""
    spec = next(s for s in typical_session() if s.description == "rfMRI_REST_AP")
    files = write_series(spec, tmp_path / "dicom")
    plain = convert_series("bold", files, tmp_path / "plain", compress=False).outputs[0]
    raw = plain.image.read_bytes()
    gzipped = convert_series("bold", files, tmp_path / "gz", level=6).outputs[0]
    before = gzipped.image.read_bytes()
    outputs = convert.gzip_outputs([plain, gzipped], 6)
    assert [o.image.name for o in outputs] == ["series.nii.gz", "series.nii.gz"]
    assert outputs[1] == gzipped and gzipped.image.read_bytes() == before  # left alone
    assert not plain.image.exists()
    assert gzip.decompress(outputs[0].image.read_bytes()) == raw
    level_3 = tmp_path / "level3.nii"
    level_3.write_bytes(raw)
    assert outputs[0].image.read_bytes() == convert.gzip_image(level_3, 3).read_bytes()


def test_a_failed_gzip_removes_its_partial_file_and_keeps_the_image(tmp_path):
    image = tmp_path / "series.nii"
    image.write_bytes(bytes(range(256)) * 40_000)  # 10 MB: more than one write
    (tmp_path / "series.nii.gz").symlink_to("/dev/full")  # every write: no space left
    with pytest.raises(ConversionError, match=r"cannot gzip series\.nii: .*No space left"):
        convert.gzip_image(image, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series.nii"]
    assert image.stat().st_size == 10_240_000


def test_failure_names_the_series(tmp_path):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a dicom file at all" * 10)
    with pytest.raises(ConversionError, match="series S7"):
        convert_series("S7", [junk], tmp_path / "work")


def test_collect_groups_side_files(tmp_path):
    for name in ("s.nii.gz", "s.json", "s_e2_ph.nii.gz", "s_e2_ph.json", "s.bval", "t.nii"):
        (tmp_path / name).write_bytes(b"")
    outputs = collect_outputs(tmp_path, "s")
    assert [o.postfix for o in outputs] == ["", "_e2_ph"]
    assert outputs[0].bval is not None and outputs[1].bval is None


def test_multi_echo_series_gives_one_output_per_echo(tmp_path):
    dicom = tmp_path / "dicom"
    for echo, te in ((1, 4.92), (2, 7.38)):
        spec = SeriesSpec(
            "gre_field_mapping",
            8,
            echo_number=echo,
            echo_time=te,
            sequence_name="*fm2d2r",
            mr_acquisition_type="2D",
        )
        write_series(spec, dicom, name_pattern=f"e{echo}_{{instance:05d}}.dcm")
    # same series UID and instance numbers across echoes, as Siemens writes them
    result = convert_series("fm", sorted(dicom.iterdir()), tmp_path / "work")
    assert sorted(o.postfix for o in result.outputs) == ["_e1", "_e2"]


def test_volumes_saved_as_separate_series_become_one_4d_image(tmp_path):
    """Siemens XA 'interoperability' exports: one series per fMRI volume (MFSPLIT)."""
    from bidsport.synthetic import uid

    files = []
    for volume in range(4):
        spec = SeriesSpec(
            "fMRI_rest",
            6 + volume,
            n_slices=3,
            repetition_time=1000.0,
            image_type=("ORIGINAL", "PRIMARY", "M", "ND", "MFSPLIT"),
            acquisition_time=f"1000{volume:02d}.000000",
            scanning_sequence=("EP",),
            mr_acquisition_type="2D",
        )
        files += write_series(
            spec, tmp_path / "dicom", name_pattern=f"v{volume}_{{instance:05d}}.dcm"
        )
    before = {p: p.read_bytes() for p in files}
    merged = convert_series("run", files, tmp_path / "w", merge_as=(uid("merged"), 6))
    assert len(merged.outputs) == 1
    assert nib.load(merged.outputs[0].image).shape == (16, 16, 3, 4)
    assert {p: p.read_bytes() for p in files} == before  # sources untouched
    # without the merge dcm2niix writes one 3D image per volume
    split = convert_series("run", files, tmp_path / "w2")
    assert len(split.outputs) == 4


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
@pytest.mark.parametrize("kind", ["Nifti1Image", "Nifti2Image"])
def test_may_be_3d_reads_the_dimensions_from_the_header(tmp_path, ext, kind):
    import numpy as np

    from bidsport.export import may_be_3d

    cls = getattr(nib, kind)
    for shape, expected in (((4, 5, 6), True), ((4, 5, 6, 2), False), ((4, 5, 6, 1), False)):
        path = tmp_path / f"{len(shape)}{shape[-1]}{ext}"
        nib.save(cls(np.zeros(shape, np.int16), np.eye(4)), path)
        assert may_be_3d(path) is expected, (shape, kind, ext)
    junk = tmp_path / f"junk{ext}"
    junk.write_bytes(b"neither NIfTI nor gzip")
    assert may_be_3d(junk)  # left to nibabel to judge (and to report)


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_make_4d_rewrites_an_image_in_place(tmp_path, ext):
    """An uncompressed .nii too: nibabel maps it, and writing it while reading from the
    map ended the process with SIGBUS (--output-format nii, a single-volume bold)."""
    import numpy as np

    from bidsport.export import make_4d

    path = tmp_path / f"bold{ext}"
    voxels = np.arange(64 * 64 * 35, dtype=np.int16).reshape(64, 64, 35)
    nib.save(nib.Nifti1Image(voxels, np.diag([2.0, 2.0, 3.0, 1.0])), path)
    assert make_4d(path)
    img = nib.load(path)
    assert img.shape == (64, 64, 35, 1)
    assert np.array_equal(np.asarray(img.dataobj)[..., 0], voxels)
    assert np.allclose(img.affine, np.diag([2.0, 2.0, 3.0, 1.0]))
    assert not make_4d(path)  # 4D already: left as it is


def _image_and_sides(output) -> tuple:
    """What a test compares of one output: postfix, voxels and header, side files."""
    img = nib.load(output.image)
    return (
        output.postfix,
        img.header.binaryblock,
        img.get_fdata().tobytes(),
        *(p.read_bytes() if p else None for p in (output.sidecar, output.bval, output.bvec)),
    )


def test_a_batch_converts_each_series_as_a_call_of_its_own_would(tmp_path):
    """Small series converted in one dcm2niix call give, series by series, the images,
    sidecars, bval and bvec that one call per series gives (two echoes of a fieldmap
    included: several images of one series keep their postfixes)."""
    specs = {s.series_number: s for s in typical_session()}
    items = []
    for number in (2, 6, 7, 8):  # T1w, 4D BOLD, DWI (bval/bvec), phase fieldmap (2 echoes)
        files = write_series(specs[number], tmp_path / "dicom" / str(number))
        uid = read_header(files[0]).series_uid
        items.append(BatchItem(f"s{number}", uid, tuple(files)))
    batch = convert_batch(items, tmp_path / "batch")
    assert set(batch) == {item.series_id for item in items}
    for item in items:
        alone = convert_series(item.series_id, item.files, tmp_path / "alone" / item.series_id)
        together = batch[item.series_id]
        assert together is not None and together.series_id == item.series_id
        assert [_image_and_sides(o) for o in together.outputs] == [
            _image_and_sides(o) for o in alone.outputs
        ]
    assert batch["s7"].outputs[0].bval is not None


def test_a_batch_says_which_series_it_wrote_nothing_for(tmp_path):
    """A series whose files dcm2niix skips, or whose UID names no image of the call, maps
    to None (the caller converts it alone); UIDs that are not distinct, or not plain, are
    refused."""
    spec = next(s for s in typical_session() if s.series_number == 2)
    files = tuple(write_series(spec, tmp_path / "dicom"))
    uid = read_header(files[0]).series_uid
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a DICOM file")
    batch = convert_batch(
        [BatchItem("t1", uid, files), BatchItem("other", "1.2.3.999", (junk,))],
        tmp_path / "batch",
    )
    assert batch["other"] is None and batch["t1"] is not None
    for bad in ([BatchItem("a", uid, files), BatchItem("b", uid, files)],
                [BatchItem("a", CRC_TWINS[0], files), BatchItem("b", CRC_TWINS[1], files)],
                [BatchItem("a", "1.2.x", files)]):  # fmt: skip
        with pytest.raises(ValueError, match="distinct"):
            convert_batch(bad, tmp_path / "bad")


#: two SeriesInstanceUIDs with one CRC-32: dcm2niix stacks such series into one image
CRC_TWINS = (
    "1.2.826.0.1.3680043.8.498.0000000000000000000000000000000000000",
    "1.2.826.0.1.3680043.8.498.3575557143100000000000000000000000000",
)


def test_crc_twins_are_twins():
    assert convert.uid_key(CRC_TWINS[0]) == convert.uid_key(CRC_TWINS[1])


def test_a_batch_whose_images_are_named_after_no_series_takes_nothing(tmp_path):
    """dcm2niix names Siemens XA single-frame images after their SeriesTime, not their UID
    (``-f %j``): an image named after no series of the batch makes every series of it
    None (each is converted alone), rather than one series' image filed under another."""
    specs = {s.series_number: s for s in typical_session()}
    items = []
    for number in (2, 3):
        extra = {**specs[number].extra, "SoftwareVersions": "syngo MR XA30"}
        files = write_series(
            dataclasses.replace(specs[number], extra=extra), tmp_path / str(number)
        )
        items.append(BatchItem(f"s{number}", read_header(files[0]).series_uid, tuple(files)))
    assert convert_batch(items, tmp_path / "batch") == {"s2": None, "s3": None}


def _linked_sources(tmp_path: Path) -> tuple[list[Path], list[Path]]:
    """Files as a session gives them to dcm2niix, and the real file behind each: a plain
    file, a relative link of a flat folder, a link to that link, and a relative link that
    climbs out of a folder reached through a symbolic link."""
    raw = tmp_path / "raw" / "packet"
    raw.mkdir(parents=True)
    for name in ("a.dcm", "b.dcm", "d.dcm"):
        (raw / name).write_bytes(name.encode())
    flat = tmp_path / "dicom"
    flat.mkdir()
    (flat / "b").symlink_to(os.path.relpath(raw / "b.dcm", flat))
    (flat / "c-chain").symlink_to(flat / "b")
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / "via").symlink_to(tmp_path / "deep" / "er")
    (tmp_path / "deep" / "er" / "d").symlink_to(
        os.path.relpath(raw / "d.dcm", tmp_path / "deep" / "er")
    )
    files = [raw / "a.dcm", flat / "b", flat / "c-chain", tmp_path / "via" / "d"]
    return files, [raw / "a.dcm", raw / "b.dcm", raw / "b.dcm", raw / "d.dcm"]


def test_link_files_hard_links_the_files_behind_symbolic_links(tmp_path: Path) -> None:
    files, real = _linked_sources(tmp_path)
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    assert convert._link_files(files, in_dir) == "hardlink"
    made = sorted(in_dir.iterdir())
    assert [p.name for p in made] == ["000000.dcm", "000001.dcm", "000002.dcm", "000003.dcm"]
    for link, target in zip(made, real, strict=True):
        assert not link.is_symlink() and os.path.samefile(link, target)
    assert [p.read_bytes() for p in made] == [b"a.dcm", b"b.dcm", b"b.dcm", b"d.dcm"]


def test_link_files_falls_back_to_symbolic_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where hard links are refused (another device), absolute symbolic links to the
    files behind the given ones."""
    files, real = _linked_sources(tmp_path)
    in_dir = tmp_path / "in"
    in_dir.mkdir()

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", refuse)
    monkeypatch.setattr(os, "supports_dir_fd", os.supports_dir_fd | {refuse})
    assert convert._link_files(files, in_dir) == "symlink"
    made = sorted(in_dir.iterdir())
    for link, target in zip(made, real, strict=True):
        assert link.is_symlink() and os.path.isabs(os.readlink(link))
        assert os.readlink(link) == os.path.realpath(target)
    assert [p.read_bytes() for p in made] == [b"a.dcm", b"b.dcm", b"b.dcm", b"d.dcm"]


def _folder_of(tmp_path: Path, *names: str) -> tuple[Path, list[Path]]:
    folder = tmp_path / "raw" / "series"
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_bytes(name.encode())
    return folder, [folder / name for name in names]


def test_series_folder_is_the_folder_its_files_fill(tmp_path: Path) -> None:
    folder, files = _folder_of(tmp_path, "1.dcm", "2.dcm", "3")
    (folder / "sub").mkdir()  # dcm2niix -d 0 does not descend: allowed
    assert convert.series_folder(files) == folder
    assert convert.series_folder(files[:2]) is None  # "3" would be converted too
    assert convert.series_folder([*files, files[0]]) is None
    assert convert.series_folder([]) is None


def test_series_folder_follows_links_to_the_folder_their_targets_fill(tmp_path: Path) -> None:
    folder, files = _folder_of(tmp_path, "1.dcm", "2.dcm")
    flat = tmp_path / "dicom"
    flat.mkdir()
    links = []
    for index, target in enumerate(files):
        (flat / f"x{index}").symlink_to(os.path.relpath(target, flat))
        links.append(flat / f"x{index}")
    (flat / "other").write_bytes(b"another series")
    assert convert.series_folder(links) == folder
    assert convert.series_folder(links[:1]) is None  # its folder holds "2.dcm" too
    # a link beside the files it stands for: its target counts, and is there already
    (folder / "again").symlink_to("1.dcm")
    assert convert.series_folder([*files, folder / "again"]) is None
    (folder / "again").unlink()
    spread = tmp_path / "elsewhere.dcm"
    spread.write_bytes(b"x")
    assert convert.series_folder([*files, spread]) is None
