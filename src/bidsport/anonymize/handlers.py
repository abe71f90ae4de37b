"""bidsport's element handlers, added in front of dicognito's (first handler wins), and
the one added after them (:class:`TextScrubber`).

Each is a dicognito ``ElementAnonymizer``: called for every element that the walk visits,
returns True when it took care of it, and can ``describe_actions()``.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Callable, Iterator

from dicognito.datetimeanonymizer import DateTimeAnonymizer
from dicognito.element_anonymizer import ElementAnonymizer
from pydicom.datadict import keyword_for_tag, private_dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from bidsport.anonymize.policy import TEXT_VRS, AnonymizePolicy, PrivateKeep
from bidsport.phi import Matcher

#: ``keyword, value → pseudonym`` (per project key)
Pseudonymizer = Callable[[str, str], str]


class PolicyHandler(ElementAnonymizer):
    """Applies the policy's per-tag actions; removes AE titles.

    ``matcher`` holds the current file's identifiers (set before each dataset) for
    ``scrub``.
    """

    def __init__(self, policy: AnonymizePolicy, pseudonymize: Pseudonymizer) -> None:
        self._actions = {tag: action for tag, action in policy.tag_actions if action != "default"}
        self._pseudonymize = pseudonymize
        self.matcher: Matcher | None = None

    @property
    def tags(self) -> frozenset[int]:
        return frozenset(self._actions)

    def __call__(self, dataset: Dataset, data_element: DataElement) -> bool:
        tag = int(data_element.tag)
        action = self._actions.get(tag)
        if action is None:
            if data_element.VR == "AE":
                del dataset[tag]
                return True
            return False
        if action == "remove":
            del dataset[tag]
        elif action == "empty":
            data_element.value = [] if data_element.VR == "SQ" else ""
        elif action == "scrub":
            if self.matcher is not None and data_element.value:
                data_element.value = _map_text(data_element.value, self.matcher.scrub)
        elif action == "pseudonym" and data_element.value and data_element.VR != "SQ":
            keyword = keyword_for_tag(tag) or f"{tag:08X}"
            data_element.value = _map_text(
                data_element.value, lambda v: self._pseudonymize(keyword, v)
            )
        return True  # "keep" included: nothing else may touch it

    def describe_actions(self) -> Iterator[str]:
        yield from ()  # described by policy.describe_policy_rules (with the private rules)


TEXT_SCRUB_ACTION = (
    "Replace the subject's names/IDs with X in every other text element "
    f"({', '.join(sorted(TEXT_VRS))}), in sequences too, unless the policy keeps it"
)


class TextScrubber(ElementAnonymizer):
    """The last handler: scrubs the current file's identifiers (``X``) from every text
    element (:data:`~bidsport.anonymize.policy.TEXT_VRS`) that no handler before it took,
    at any depth.

    The handlers before it are the policy's (so ``keep`` keeps a value verbatim, and
    ``scrub``, ``pseudonym``... are done already) and dicognito's (person names, IDs,
    addresses...). It reads the matcher the :class:`PolicyHandler` holds for the file.
    A value without an identifier is left as it is.
    """

    def __init__(self, policy_handler: PolicyHandler) -> None:
        self._policy_handler = policy_handler

    def __call__(self, dataset: Dataset, data_element: DataElement) -> bool:
        if data_element.VR not in TEXT_VRS:
            return False
        matcher = self._policy_handler.matcher
        value = data_element.value
        if matcher is None or matcher.empty or not value:
            return False
        values = list(value) if isinstance(value, MultiValue | list) else [value]
        scrubbed = [matcher.scrub(str(v)) for v in values]
        if scrubbed != [str(v) for v in values]:
            data_element.value = scrubbed if len(scrubbed) > 1 else scrubbed[0]
        return True

    def describe_actions(self) -> Iterator[str]:
        yield TEXT_SCRUB_ACTION


def _map_text(value: object, fn: Callable[[str], str]) -> object:
    if isinstance(value, MultiValue | list):
        return [fn(str(v)) for v in value]
    return fn(str(value))


class SafeDateTimeAnonymizer(DateTimeAnonymizer):
    """dicognito's date shifter; dates it cannot parse (``***``, ``0``) are emptied."""

    def __call__(self, dataset: Dataset, data_element: DataElement) -> bool:
        try:
            return bool(super().__call__(dataset, data_element))
        except (ValueError, TypeError, OverflowError):
            data_element.value = ""
            return True

    def describe_actions(self) -> Iterator[str]:
        yield (
            "Shift all DA and DT elements by the subject's offset (whole days, to 1925 or "
            "earlier; the same for every session of the subject; times of day stay)"
        )
        yield "Empty DA and DT elements that are not valid dates"


# --------------------------------------------------------------------------- private tags

_UID_BYTES = re.compile(rb"(?<![0-9.])[0-9]+(?:\.[0-9]+){5,}(?![0-9.])")
_UID_START = re.compile(rb"[0-9]\.[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+\.[0-9]")


class PrivateFilter:
    """Decides which private elements stay, and cleans the values of those that do."""

    def __init__(self, keeps: tuple[PrivateKeep, ...]) -> None:
        self._elements: dict[tuple[int, str], frozenset[int]] = {}
        for keep in keeps:
            key = (keep.group, keep.creator.strip().upper())
            self._elements[key] = self._elements.get(key, frozenset()) | keep.elements
        self._cache: dict[tuple[bytes, Matcher | None], bytes] = {}

    @property
    def active(self) -> bool:
        return bool(self._elements)

    def keep_creator(self, group: int, creator: str) -> bool:
        return (group, creator.strip().upper()) in self._elements

    def keep_element(self, group: int, creator: str | None, offset: int) -> bool:
        if creator is None:
            return False
        return offset in self._elements.get((group, creator.strip().upper()), frozenset())

    @staticmethod
    def vr_of(tag: int, creator: str | None, vr: str | None) -> str | None:
        """``vr``, else the VR of a kept private element from pydicom's private dictionary
        ("UN" when it is not there; None without a creator)."""
        if vr is not None or creator is None:
            return vr
        try:
            return str(private_dictionary_VR(tag, creator))
        except KeyError:
            return "UN"

    def clean_value(self, raw: RawDataElement, matcher: Matcher | None) -> RawDataElement:
        """``raw`` with UIDs zeroed and identifiers X-ed, keeping its length.

        A GE protocol data block (4-byte length + gzip) is unpacked, cleaned and packed
        again (its length may change; DICOM lengths stay even). Results are cached: the
        large vendor headers repeat in every file of a series.
        """
        value = raw.value
        if not isinstance(value, bytes) or not value:
            return raw
        key = (value, matcher)
        cleaned = self._cache.get(key)
        if cleaned is None:
            cleaned = _clean_bytes(value, matcher)
            if len(self._cache) >= 256:
                self._cache.clear()
            self._cache[key] = cleaned
        if cleaned == value:
            return raw
        return raw._replace(value=cleaned, length=len(cleaned))


def _clean_bytes(value: bytes, matcher: Matcher | None) -> bytes:
    if value[4:6] == b"\x1f\x8b":
        cleaned = _clean_gzip_block(value, matcher)
        return value if cleaned is None else cleaned
    if _UID_START.search(value):
        value = _UID_BYTES.sub(lambda m: re.sub(rb"[0-9]", b"0", m.group(0)), value)
    if matcher is not None:
        value = matcher.scrub_same_length(value)
    return value


def _clean_gzip_block(value: bytes, matcher: Matcher | None) -> bytes | None:
    try:
        text = zlib.decompress(value[4:], 16 + zlib.MAX_WBITS)
    except zlib.error:
        return None
    cleaned = _UID_BYTES.sub(lambda m: re.sub(rb"[0-9]", b"0", m.group(0)), text)
    if matcher is not None:
        cleaned = matcher.scrub_same_length(cleaned)
    if cleaned == text:
        return value
    packed = gzip.compress(cleaned, mtime=0)
    out = len(packed).to_bytes(4, "little") + packed
    return out + b"\x00" if len(out) % 2 else out
