"""How a clip's tensors travel from a decoding worker to the model's process.

Each worker owns a few fixed slots in one shared memory region that the model's
process maps before it starts the workers (inherited across fork). A worker writes
a clip's audio and frames into its next slot and sends only a small record (the
clip's row and where its tensors lie); the model's process reads them in place,
copies them to the GPU and gives the slot back when it asks for the next item. Nothing per clip then goes through the file-descriptor
passing that torch.multiprocessing otherwise uses for tensors: on a GPU server,
that hand-over (a socket connection to the busy worker and two descriptors per
clip) was the serial stage that held extraction at a third of the decode limit.

The region is an anonymous shared mapping: it is not limited by the size of
/dev/shm (64 MB in a default container), and only the pages written are ever
resident. An item that does not fit a slot travels as before.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, replace

import torch

from socialfeat.model_inputs import FrameList
from socialfeat.preprocess import PreprocessSpec

ALIGN = 4096


@dataclass(frozen=True)
class SlotTensor:
    """Where a tensor lies in the region: what travels instead of its bytes."""
    offset: int
    shape: tuple[int, ...]
    dtype: torch.dtype


def slot_bytes(spec: PreprocessSpec, raw_frames_max_pixels: int) -> int:
    """The bytes one clip needs at most: its frames (decoded uint8 frames up to the size that is
    handed over raw, or transformed float32 frames) and its fbank (float32)."""
    frames = spec.num_frames * max(3 * raw_frames_max_pixels, 3 * spec.image_size ** 2 * 4)
    audio = spec.target_length * spec.num_mel_bins * 4
    return _aligned(frames) + _aligned(audio)


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class SharedSlots:
    """``n_owners`` x ``per_owner`` slots of ``size`` bytes in one shared anonymous mapping.

    Create it before the workers are forked; owner ``i`` (a worker's place in the pool) uses
    its slots in turn, and may reuse a slot once the model's process has taken what it sent
    in it (the pool's credits guarantee that)."""

    def __init__(self, n_owners: int, per_owner: int, size: int):
        self.per_owner, self.size = per_owner, _aligned(size)
        self._map = mmap.mmap(-1, max(1, n_owners * per_owner * self.size))  # MAP_SHARED | MAP_ANONYMOUS
        self._bytes = torch.frombuffer(self._map, dtype=torch.uint8)

    def slot_offset(self, owner: int, sequence: int) -> int:
        """The start of the slot an owner uses for its ``sequence``-th message."""
        return (owner * self.per_owner + sequence % self.per_owner) * self.size

    def put(self, tensors: list[torch.Tensor | FrameList | None], offset: int) -> list[SlotTensor | None] | None:
        """Write ``tensors`` into the slot at ``offset`` (a FrameList as the stack of its frames);
        None when they do not fit (they then travel as they are)."""
        placed: list[SlotTensor | None] = [None if t is None else SlotTensor(0, tuple(t.shape), t.dtype)
                                           for t in tensors]
        if sum(_aligned(_nbytes(w)) for w in placed if w is not None) > self.size:
            return None
        for i, t in enumerate(tensors):
            if t is None:
                continue
            placed[i] = replace(placed[i], offset=offset)
            view = self.view(placed[i])
            if isinstance(t, FrameList):
                for k, frame in enumerate(t.frames):
                    view[k].copy_(frame)
            else:
                view.copy_(t)
            offset += _aligned(_nbytes(placed[i]))
        return placed

    def view(self, where: SlotTensor | None) -> torch.Tensor | None:
        """The tensor a worker placed, in place: valid until its slot is given back."""
        if where is None:
            return None
        return self._bytes[where.offset:where.offset + _nbytes(where)].view(where.dtype).view(where.shape)


def _nbytes(where: SlotTensor) -> int:
    return torch.Size(where.shape).numel() * torch.empty((), dtype=where.dtype).element_size()


def pack(item, slots: SharedSlots, offset: int):
    """A ClipItem with its tensors placed in the slot at ``offset`` (worker side); the item
    itself when they do not fit."""
    placed = slots.put([item.audio, item.video], offset)
    if placed is None:
        return stacked(item)
    return replace(item, audio=placed[0], video=placed[1])


def stacked(item):
    """The item with its frames as one tensor (a FrameList that travels as it is)."""
    return replace(item, video=item.video.stacked()) if isinstance(item.video, FrameList) else item


def in_slot(item) -> bool:
    return isinstance(item.video, SlotTensor)


def unpack(item, slots: SharedSlots):
    """A ClipItem whose tensors are views of the slot its worker wrote (model's process side):
    the consumer copies what it needs before the slot is given back (see workers.WorkerPool)."""
    if not in_slot(item):
        return item
    return replace(item, audio=slots.view(item.audio), video=slots.view(item.video))
