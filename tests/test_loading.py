"""The shared DataLoader: seeded per-epoch shuffling that a checkpoint resumes exactly, in every later epoch too."""

from __future__ import annotations

import pytest

from rmrouter.data.loading import EpochShuffler, seeded_loader

SIZE, BATCH = 10, 4  # 3 batches per epoch, the last one short


def batches(loader, count: int, iterator=None) -> tuple[list[list[int]], object]:
    """The next `count` batches, starting new epochs as a training loop does; the live iterator is returned too."""
    out = []
    iterator = iterator or iter(loader)
    while len(out) < count:
        try:
            out.append(next(iterator).tolist())
        except StopIteration:
            iterator = iter(loader)
    return out, iterator


def test_every_epoch_is_a_new_permutation_fixed_by_the_seed():
    loader = seeded_loader(list(range(SIZE)), BATCH, True, 0, 0)
    epochs = [[i for batch in loader for i in batch.tolist()] for _ in range(3)]
    assert all(sorted(order) == list(range(SIZE)) for order in epochs)
    assert len({tuple(order) for order in epochs}) == 3
    again = seeded_loader(list(range(SIZE)), BATCH, True, 0, 0)
    assert [[i for batch in again for i in batch.tolist()] for _ in range(3)] == epochs
    other = seeded_loader(list(range(SIZE)), BATCH, True, 1, 0)
    assert [i for batch in other for i in batch.tolist()] != epochs[0]


@pytest.mark.parametrize("stop_after", range(1, 8))
def test_a_loader_restored_from_its_state_goes_on_exactly_as_an_uninterrupted_one(stop_after):
    uninterrupted, _ = batches(seeded_loader(list(range(SIZE)), BATCH, True, 0, 0), 12)
    loader = seeded_loader(list(range(SIZE)), BATCH, True, 0, 0)
    before, _ = batches(loader, stop_after)
    restored = seeded_loader(list(range(SIZE)), BATCH, True, 0, 0)
    restored.load_state_dict(loader.state_dict())
    after, _ = batches(restored, 12 - stop_after)
    assert before + after == uninterrupted


def test_the_order_is_a_function_of_seed_and_epoch_alone():
    sampler = EpochShuffler(SIZE, seed=3)
    orders = [list(sampler) for _ in range(3)]
    assert sampler.epoch == 2  # the last pass
    restored = EpochShuffler(SIZE, seed=3)
    restored.load_state_dict({"epoch": 1, "yielded": 0})
    assert list(restored) == orders[1] and list(restored) == orders[2]
    finished = EpochShuffler(SIZE, seed=3)
    finished.load_state_dict({"epoch": 0, "yielded": SIZE})
    assert list(finished) == orders[1]  # a finished pass is not repeated, even as an empty one
    unused = EpochShuffler(SIZE, seed=3)
    iter(unused), iter(unused)  # made and dropped before a single index: no epoch is spent
    assert list(unused) == orders[0]
    partial = iter(unused)
    next(partial)  # a pass left after one index, as Lightning leaves one after len(loader) batches, still counts
    assert list(unused) == orders[2]


def test_set_epoch_places_only_a_fresh_shuffler():
    sampler = EpochShuffler(SIZE, seed=3)
    orders = [list(sampler) for _ in range(3)]
    # a fresh loader of a fit resumed from an epoch-end checkpoint (Lightning restores no loader state then)
    fresh = EpochShuffler(SIZE, seed=3)
    fresh.set_epoch(2)
    assert list(fresh) == orders[2]
    # once it has run, its own count rules: Lightning's epoch is one ahead after a max_steps stop in mid-epoch
    fresh.set_epoch(7)
    assert fresh.epoch == 2
    restored = EpochShuffler(SIZE, seed=3)
    restored.load_state_dict({"epoch": 1, "yielded": 4})
    restored.set_epoch(2)  # Lightning counts the interrupted epoch 1 as finished
    assert list(restored) == orders[1][4:]


def test_an_unshuffled_loader_keeps_the_dataset_order():
    loader = seeded_loader(list(range(SIZE)), BATCH, False, 0, 0)
    assert [batch.tolist() for batch in loader] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
