"""DataLoader workers share the machine's cores among their video decoders."""

from __future__ import annotations

from torch.utils.data import DataLoader, IterableDataset

from socialfeat import media
from socialfeat.media import available_cores
from socialfeat.pipeline import worker_init


class DecoderThreads(IterableDataset):
    def __iter__(self):
        yield media._decoder_threads


def test_pretraining_loaders_decode_with_their_share_of_the_cores():
    loader = DataLoader(DecoderThreads(), batch_size=None, num_workers=2, worker_init_fn=worker_init)
    assert list(loader) == [max(1, available_cores() // 2)] * 2
    assert media._decoder_threads == 1  # the main process (and extraction's workers) keep one thread
