"""detector.core.distributed: sharding, the ordered stream, gathering, and a failing rank."""
import json
import os
import signal
from pathlib import Path

import pytest
from spawn_ranks import RanksFailed, run_ranks

from detector.core import distributed


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_cover_every_item_exactly_once(world):
    for size in range(12):
        items = list(range(size))
        shards = [distributed.shard(items, r, world) for r in range(world)]
        assert sorted(i for s in shards for i in s) == items
        assert max(map(len, shards)) - min(map(len, shards)) <= 1  # balanced


def test_one_process_helpers_pass_through():
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    assert distributed.shard([3, 1, 2]) == [3, 1, 2]
    distributed.barrier()
    assert distributed.gather_to_main("a") == ["a"] and distributed.all_gather_objects(5) == [5]
    computed = []
    stream = distributed.ordered_stream([1, 2, 3], lambda x: computed.append(x) or x * 10)
    assert next(stream) == (1, 10) and computed == [1]  # lazy, item by item, as a plain loop
    assert list(stream) == [(2, 20), (3, 30)]
    assert distributed.init_from_env("cpu") is False  # no WORLD_SIZE: no process group


def _stream_on_ranks(out: str) -> None:
    me = distributed.rank()
    computed = []

    def compute(item):
        computed.append(item)
        return None if item == 4 else {"item": item, "square": item * item}  # item 4 "fails"

    streamed = [[item, value] for item, value in distributed.ordered_stream(list(range(7)), compute)]
    in_threes = [[item, value] for item, value in distributed.ordered_stream(list(range(7)), compute, per_round=3)]
    assert in_threes == streamed  # rounds of 3 items per rank: the same stream
    gathered = distributed.gather_to_main(me * 100)
    metrics = distributed.broadcast_from_main({"from": me})
    Path(out, f"rank{me}.json").write_text(json.dumps({"computed": computed, "streamed": streamed,
                                                       "gathered": gathered, "broadcast": metrics}))


def test_two_ranks_stream_every_item_in_order_computed_once(tmp_path):
    run_ranks(_stream_on_ranks, 2, str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    expected = [[i, None if i == 4 else {"item": i, "square": i * i}] for i in range(7)]
    assert ranks[0]["streamed"] == expected and ranks[1]["streamed"] == expected
    assert ranks[0]["computed"] == [0, 2, 4, 6] * 2 and ranks[1]["computed"] == [1, 3, 5] * 2
    assert ranks[0]["gathered"] == [0, 100] and ranks[1]["gathered"] is None
    assert ranks[0]["broadcast"] == ranks[1]["broadcast"] == {"from": 0}


def _fail_on_rank_one() -> None:
    def compute(item):
        if distributed.rank() == 1 and item == 3:
            raise RuntimeError("image 3 is broken on purpose")
        return item

    for _ in distributed.ordered_stream(list(range(6)), compute):
        pass


def _killed_on_rank_one() -> None:
    def compute(item):
        if distributed.rank() == 1 and item == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return item

    for _ in distributed.ordered_stream(list(range(6)), compute):
        pass


def test_a_failing_rank_stops_the_run_naming_the_rank_and_cause():
    with pytest.raises(RanksFailed) as raised:
        run_ranks(_fail_on_rank_one, 2)
    assert str(raised.value) == "rank 1 failed: RuntimeError: image 3 is broken on purpose"


def test_a_killed_rank_stops_the_run_naming_it():
    """Rank 0, waiting for the killed rank's share in a collective, is stopped with it."""
    with pytest.raises(RanksFailed, match=r"rank 1 was killed \(SIGKILL\)"):
        run_ranks(_killed_on_rank_one, 2)
