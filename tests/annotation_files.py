"""Real annotation files, written as ELAN 3.0 and Praat write them (not with the reader's library)."""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

# tier: (name, [(start s, end s, value)]) for time-aligned tiers; ELAN extras go in `ref_tiers`
Tier = tuple[str, list[tuple[float, float, str]]]


def write_eaf(path: Path, tiers: list[Tier], media: list[tuple[str, str, int]] = (),
              ref_tiers: list[tuple[str, str, str, list[tuple[int, str]]]] = (),
              subdivision: tuple[str, str, list[tuple[int, list[str]]]] | None = None,
              encoding: str = "UTF-8") -> Path:
    """An ELAN 3.0 document: one TIME_SLOT per boundary (ms), a top-level tier per entry of ``tiers``,
    MEDIA_DESCRIPTORs (MEDIA_URL, RELATIVE_MEDIA_URL, TIME_ORIGIN ms), optional reference tiers
    (name, parent tier, constraint, [(parent annotation index, value)]) and an optional
    Time_Subdivision tier (name, parent tier, [(parent annotation index, [values])]) whose inner
    boundaries are unaligned time slots."""
    slots: list[str] = []
    body: list[str] = []
    aid = 0
    ids: dict[str, list[str]] = {}

    def slot(ms: int | None) -> str:
        slots.append(f'        <TIME_SLOT TIME_SLOT_ID="ts{len(slots) + 1}"'
                     + (f' TIME_VALUE="{ms}"/>' if ms is not None else "/>"))
        return f"ts{len(slots)}"

    spans: dict[str, list[tuple[str, str]]] = {}
    for name, items in tiers:
        body.append(f'    <TIER LINGUISTIC_TYPE_REF="default-lt" PARTICIPANT="P" TIER_ID={quoteattr(name)}>')
        for start, end, value in items:
            aid += 1
            ids.setdefault(name, []).append(f"a{aid}")
            s, e = slot(round(start * 1000)), slot(round(end * 1000))
            spans.setdefault(name, []).append((s, e))
            body.append(f'        <ANNOTATION><ALIGNABLE_ANNOTATION ANNOTATION_ID="a{aid}" TIME_SLOT_REF1="{s}" '
                        f'TIME_SLOT_REF2="{e}"><ANNOTATION_VALUE>{escape(value)}</ANNOTATION_VALUE>'
                        '</ALIGNABLE_ANNOTATION></ANNOTATION>')
        body.append("    </TIER>")
    if subdivision:
        name, parent, parts = subdivision
        body.append(f'    <TIER LINGUISTIC_TYPE_REF="subdivision" PARENT_REF={quoteattr(parent)} '
                    f'TIER_ID={quoteattr(name)}>')
        for index, values in parts:
            s, e = spans[parent][index]
            bounds = [s] + [slot(None) for _ in values[1:]] + [e]
            for k, value in enumerate(values):
                aid += 1
                body.append(f'        <ANNOTATION><ALIGNABLE_ANNOTATION ANNOTATION_ID="a{aid}" '
                            f'TIME_SLOT_REF1="{bounds[k]}" TIME_SLOT_REF2="{bounds[k + 1]}"><ANNOTATION_VALUE>'
                            f'{escape(value)}</ANNOTATION_VALUE></ALIGNABLE_ANNOTATION></ANNOTATION>')
        body.append("    </TIER>")
    for name, parent, constraint, items in ref_tiers:
        body.append(f'    <TIER LINGUISTIC_TYPE_REF="{constraint}" PARENT_REF={quoteattr(parent)} '
                    f'TIER_ID={quoteattr(name)}>')
        previous: dict[int, str] = {}
        for index, value in items:
            aid += 1
            prev = f' PREVIOUS_ANNOTATION="{previous[index]}"' if index in previous else ""
            previous[index] = f"a{aid}"
            body.append(f'        <ANNOTATION><REF_ANNOTATION ANNOTATION_ID="a{aid}" '
                        f'ANNOTATION_REF="{ids[parent][index]}"{prev}><ANNOTATION_VALUE>{escape(value)}'
                        '</ANNOTATION_VALUE></REF_ANNOTATION></ANNOTATION>')
        body.append("    </TIER>")
    descriptors = "".join(
        f'        <MEDIA_DESCRIPTOR MEDIA_URL={quoteattr(url)} MIME_TYPE="video/mp4" '
        f'RELATIVE_MEDIA_URL={quoteattr(rel)}' + (f' TIME_ORIGIN="{origin}"' if origin else "") + "/>\n"
        for url, rel, origin in media)
    text = f"""<?xml version="1.0" encoding="{encoding}"?>
<ANNOTATION_DOCUMENT AUTHOR="" DATE="2024-05-01T10:00:00+01:00" FORMAT="3.0" VERSION="3.0" \
xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="http://www.mpi.nl/tools/elan/EAFv3.0.xsd">
    <HEADER MEDIA_FILE="" TIME_UNITS="milliseconds">
{descriptors}        <PROPERTY NAME="lastUsedAnnotationId">{aid}</PROPERTY>
    </HEADER>
    <TIME_ORDER>
{chr(10).join(slots)}
    </TIME_ORDER>
{chr(10).join(body)}
{LINGUISTIC_TYPES}
</ANNOTATION_DOCUMENT>
"""
    path.write_bytes(text.encode("utf-16" if encoding.upper() == "UTF-16" else "utf-8"))
    return path


_CONSTRAINTS = {"Time_Subdivision": "Time subdivision of parent annotation's time interval, no time gaps allowed "
                                    "within this interval",
                "Symbolic_Subdivision": "Symbolic subdivision of a parent annotation. Annotations refering to the "
                                        "same parent are ordered",
                "Symbolic_Association": "1-1 association with a parent annotation"}
LINGUISTIC_TYPES = "\n".join(
    ['    <LINGUISTIC_TYPE GRAPHIC_REFERENCES="false" LINGUISTIC_TYPE_ID="default-lt" TIME_ALIGNABLE="true"/>',
     '    <LINGUISTIC_TYPE CONSTRAINTS="Time_Subdivision" GRAPHIC_REFERENCES="false" '
     'LINGUISTIC_TYPE_ID="subdivision" TIME_ALIGNABLE="true"/>']
    + [f'    <LINGUISTIC_TYPE CONSTRAINTS="{c}" GRAPHIC_REFERENCES="false" LINGUISTIC_TYPE_ID="{c}" '
       'TIME_ALIGNABLE="false"/>' for c in ("Symbolic_Association", "Symbolic_Subdivision")]
    + [f'    <CONSTRAINT DESCRIPTION="{d}" STEREOTYPE="{c}"/>' for c, d in _CONSTRAINTS.items()])


def _q(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def write_textgrid(path: Path, tiers: list[Tier], xmax: float, fmt: str = "long", encoding: str = "utf-8",
                   points: list[tuple[str, list[tuple[float, str]]]] = (), fill_gaps: bool = True,
                   newline: str = "\n") -> Path:
    """A Praat text TextGrid, long ("text file") or short ("short text file") format, as Praat writes
    it: interval tiers span [0, xmax] with empty intervals in the gaps. encoding 'utf-16' gives
    big-endian with a BOM (Praat's choice for non-ASCII text)."""
    def intervals(items):
        out, t = [], 0.0
        for s, e, v in sorted(items):
            if fill_gaps and s > t:
                out.append((t, s, ""))
            out.append((s, e, v))
            t = e
        if fill_gaps and t < xmax:
            out.append((t, xmax, ""))
        return out

    num = lambda x: f"{x:g}" if abs(x) >= 1e-4 or x == 0 else repr(x)  # noqa: E731 (Praat: %.17g)
    all_tiers = [("IntervalTier", name, intervals(items)) for name, items in tiers] + \
        [("TextTier", name, marks) for name, marks in points]
    if fmt == "long":
        lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "xmin = 0 ", f"xmax = {num(xmax)} ",
                 "tiers? <exists> ", f"size = {len(all_tiers)} ", "item []: "]
        for i, (cls, name, items) in enumerate(all_tiers, start=1):
            lines += [f"    item [{i}]:", f'        class = "{cls}" ', f"        name = {_q(name)} ",
                      "        xmin = 0 ", f"        xmax = {num(xmax)} "]
            if cls == "IntervalTier":
                lines.append(f"        intervals: size = {len(items)} ")
                for k, (s, e, v) in enumerate(items, start=1):
                    lines += [f"        intervals [{k}]:", f"            xmin = {num(s)} ",
                              f"            xmax = {num(e)} ", f"            text = {_q(v)} "]
            else:
                lines.append(f"        points: size = {len(items)} ")
                for k, (t, v) in enumerate(items, start=1):
                    lines += [f"        points [{k}]:", f"            number = {num(t)} ",
                              f"            mark = {_q(v)} "]
    else:
        lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "0", num(xmax), "<exists>",
                 str(len(all_tiers))]
        for cls, name, items in all_tiers:
            lines += [f'"{cls}"', _q(name), "0", num(xmax), str(len(items))]
            for item in items:
                lines += [num(x) for x in item[:-1]] + [_q(item[-1])]
    text = newline.join(lines) + newline
    data = (b"\xfe\xff" + text.encode("utf-16-be")) if encoding == "utf-16" else text.encode(encoding)
    path.write_bytes(data)
    return path


def overlapping_segments(path: Path) -> Path:
    """A segments CSV (long.mp4 of 40 s, short.mp4) as a multi-tier annotation gives it: overlapping,
    out of time order, a long segment cut into pieces, segments across the tests' 4-s span grid, one
    running past the video's end and one starting after it (each noted once in the errors table)."""
    path.write_text("video,start,end,label\n"
                    "long.mp4,30,38,late\n"
                    "long.mp4,0,20,long-turn\n"
                    "long.mp4,5,9,overlap\n"
                    "long.mp4,17.5,26,across\n"
                    "long.mp4,39,45,tail\n"
                    "long.mp4,50,55,after\n"
                    "short.mp4,1,5,short\n")
    return path
