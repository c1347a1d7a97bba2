"""Annotation and segment files as researchers' tools write them: cases found by testing the
reader, the matcher and the CSV readers against such files."""

from __future__ import annotations

import pytest
from annotation_files import LINGUISTIC_TYPES

from socialfeat.annotations import read_annotation_file

# utterance 0-4 s; words: w1, w2 (Time_Subdivision of utterance); syllables: s1, s2, s3 in w1 and s4
# in w2 (Time_Subdivision of words). Slots are shared as ELAN shares them; only 0 and 4000 ms are aligned.
_NESTED_TIERS = {
    "utterance": ("default-lt", None, [("ts1", "ts2", "utt")]),
    "words": ("subdivision", "utterance", [("ts1", "ts3", "w1"), ("ts3", "ts2", "w2")]),
    "syllables": ("subdivision", "words", [("ts1", "ts4", "s1"), ("ts4", "ts5", "s2"), ("ts5", "ts3", "s3"),
                                           ("ts3", "ts2", "s4")]),
}


def _nested_eaf(path, order):
    body, aid = [], 0
    for tier in order:
        ltype, parent, items = _NESTED_TIERS[tier]
        ref = f' PARENT_REF="{parent}"' if parent else ""
        body.append(f'<TIER LINGUISTIC_TYPE_REF="{ltype}"{ref} TIER_ID="{tier}">')
        for s, e, value in items:
            aid += 1
            body.append(f'<ANNOTATION><ALIGNABLE_ANNOTATION ANNOTATION_ID="a{aid}" TIME_SLOT_REF1="{s}" '
                        f'TIME_SLOT_REF2="{e}"><ANNOTATION_VALUE>{value}</ANNOTATION_VALUE>'
                        '</ALIGNABLE_ANNOTATION></ANNOTATION>')
        body.append("</TIER>")
    path.write_text(f"""<?xml version="1.0" encoding="UTF-8"?>
<ANNOTATION_DOCUMENT AUTHOR="" DATE="2024-05-01T10:00:00+01:00" FORMAT="3.0" VERSION="3.0" \
xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="http://www.mpi.nl/tools/elan/EAFv3.0.xsd">
<HEADER MEDIA_FILE="" TIME_UNITS="milliseconds"/>
<TIME_ORDER><TIME_SLOT TIME_SLOT_ID="ts1" TIME_VALUE="0"/><TIME_SLOT TIME_SLOT_ID="ts4"/><TIME_SLOT TIME_SLOT_ID="ts5"/>
<TIME_SLOT TIME_SLOT_ID="ts3"/><TIME_SLOT TIME_SLOT_ID="ts2" TIME_VALUE="4000"/></TIME_ORDER>
{chr(10).join(body)}
{LINGUISTIC_TYPES}
</ANNOTATION_DOCUMENT>
""", encoding="utf-8")
    return path


@pytest.mark.parametrize("order", [("utterance", "words", "syllables"), ("syllables", "words", "utterance")])
def test_nested_time_subdivisions_take_elan_times_whatever_the_tier_order(tmp_path, order):
    """Unaligned slots are spread within the parent annotation (ELAN's display), also when the file
    lists a child tier before its parent."""
    tiers = read_annotation_file(_nested_eaf(tmp_path / "nested.eaf", order)).tiers
    assert tiers["words"] == [(0.0, 2.0, "w1"), (2.0, 4.0, "w2")]
    assert tiers["syllables"] == [(0.0, 0.666667, "s1"), (0.666667, 1.333333, "s2"), (1.333333, 2.0, "s3"),
                                  (2.0, 4.0, "s4")]
