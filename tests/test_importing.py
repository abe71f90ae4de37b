"""Libraries imported without what bidsport never uses of them (bidsport.importing)."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from bidsport.runner import run_command


def _in_fresh_python(code: str) -> list[str]:
    """The lines ``code`` prints, run in a new Python (which has imported nothing yet)."""
    result = run_command([sys.executable, "-c", code], timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_a_deferred_module_loads_at_its_first_use_and_stays_the_only_one() -> None:
    probe = (
        "import sys\n"
        "from bidsport.importing import without\n"
        "with without(importing='json', deferred=('xml.dom.minidom',)):\n"
        "    import json\n"
        "    from xml.dom import minidom\n"
        "print('xml.dom.minicompat' in sys.modules, type(minidom).__name__)\n"
        "import xml.dom.minidom\n"
        "print(xml.dom.minidom is minidom is sys.modules['xml.dom.minidom'])\n"
        "print(minidom.parseString('<a><b/></a>').documentElement.tagName)\n"
        "print('xml.dom.minicompat' in sys.modules, type(minidom).__name__)\n"
    )
    assert _in_fresh_python(probe) == ["False _LazyModule", "True", "a", "True module"]


def test_nothing_is_deferred_or_hidden_once_the_library_is_loaded() -> None:
    probe = (
        "import sys, json\n"
        "from bidsport.importing import without\n"
        "with without('csv', importing='json', deferred=('xml.dom.minidom',)):\n"
        "    import csv\n"
        "print('xml.dom.minidom' in sys.modules, csv.__name__)\n"
    )
    assert _in_fresh_python(probe) == ["False csv"]


def test_nibabel_is_imported_without_what_bidsport_never_uses(tmp_path: Path) -> None:
    """bidsport.niftiio: no pydicom, no scipy, urllib.request loaded only when used; the
    image reads the same, and each of them imports as usual afterwards."""
    image = tmp_path / "image.nii.gz"
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0])), image)
    probe = (
        "import sys, importlib.util\n"
        "from bidsport.niftiio import nib\n"
        f"img = nib.load({str(image)!r})\n"
        "print(img.get_fdata().sum(), img.affine[2, 2])\n"
        "print(*(m in sys.modules for m in ('pydicom', 'scipy', 'http.client', 'ssl')))\n"
        "print(type(sys.modules['urllib.request']).__name__)\n"
        "import urllib.request\n"
        "print(nib.filebasedimages.request is urllib.request, urllib.request.Request.__name__)\n"
        "print('http.client' in sys.modules, type(urllib.request).__name__)\n"
        "import pydicom\n"
        "print(pydicom.dcmread.__name__)\n"
        "if importlib.util.find_spec('scipy') is not None:\n"
        "    import scipy\n"
        "print('scipy' in sys.modules or importlib.util.find_spec('scipy') is None)\n"
    )
    assert _in_fresh_python(probe) == [
        f"{float(data.sum())} 3.0",
        "False False False False",
        "_LazyModule",
        "True Request",
        "True module",
        "dcmread",
        "True",
    ]
