"""Where a batch stands against what Redis holds (``spark_jobs.recovery``),
decided from offsets alone; Kafka's view is given as it would answer."""

import json

import pytest

from spark_jobs import recovery

TP = ("page_views", 0)


class Kafka:
    """What Kafka holds of each partition: its earliest offset, and the offsets
    that are records (None: every offset from the earliest on)."""

    def __init__(self, earliest=0, records=None):
        self.low = earliest
        self.records = records

    def earliest(self, tps):
        return dict.fromkeys(tps, self.low)

    def first_record(self, tp, start, end):
        offsets = range(start, end) if self.records is None else self.records
        found = [o for o in offsets if start <= o < end]
        return found[0] if found else None


def held(**offsets):
    return recovery.Position({TP: offsets["at"]} if "at" in offsets else {}, {})


def test_a_batch_that_follows_on_from_redis_asks_nothing_of_kafka():
    assert recovery.judge({TP: 100}, held(at=100), None).expired == {}
    # read again from an older checkpoint: left out when scored, not a gap
    assert recovery.judge({TP: 40}, held(at=100), None).expired == {}


def test_a_batch_past_redis_rewinds_to_redis_and_counts_what_it_applies_again():
    with pytest.raises(recovery.Rewind) as rewind:
        recovery.judge({TP: 250}, held(at=100), Kafka(), planned={TP: 240})
    assert rewind.value.offsets == {TP: 100} and rewind.value.reapplied == 150


def test_an_empty_redis_is_rebuilt_from_the_earliest_kafka_holds_unless_told_latest():
    with pytest.raises(recovery.Rewind) as rewind:
        recovery.judge({TP: 250}, held(), Kafka(earliest=30))
    assert rewind.value.offsets == {TP: 30}
    assert recovery.judge({TP: 250}, held(), Kafka(earliest=30), from_earliest=False).expired == {}


def test_records_deleted_before_they_were_read_are_expired_not_a_gap():
    verdict = recovery.judge({TP: 300}, held(at=100), Kafka(earliest=300))
    assert verdict.expired == {TP: 200}
    # deleted up to 250, and Redis lacks 250..299 as well: counted, then rewound
    with pytest.raises(recovery.Rewind) as rewind:
        recovery.judge({TP: 300}, held(at=100), Kafka(earliest=250))
    assert rewind.value.offsets == {TP: 250}


def test_a_rewind_that_finds_no_record_where_it_went_is_not_a_gap_again():
    # offset 100 is a transaction marker: the rewound query's first record is 101
    assert recovery.judge({TP: 101}, held(at=100), Kafka(), absent={TP: 100}).expired == {}


def test_redis_behind_the_querys_progress_rewinds_where_kafka_has_records():
    rewind, forward, expired = recovery.behind(held(at=100), {TP: 180}, Kafka())
    assert rewind.offsets == {TP: 100} and rewind.reapplied == 80 and not forward


def test_redis_behind_where_kafka_holds_nothing_moves_forward_and_counts_expired():
    # every record of a quiet partition expired: nothing to read again
    rewind, forward, expired = recovery.behind(held(at=100), {TP: 500}, Kafka(earliest=500))
    assert rewind is None and forward == {TP: 500} and expired == {TP: 400}
    # only a transaction marker after Redis's offset
    rewind, forward, expired = recovery.behind(held(at=100), {TP: 101}, Kafka(records=[]))
    assert rewind is None and forward == {TP: 101} and expired == {}


def test_starting_offsets_name_every_partition_and_drop_a_topics_earlier_life():
    position = recovery.Position({TP: 7}, {"page_views": "old-id"})
    same = json.loads(recovery.starting_offsets(position, {"page_views": [0, 1]}, {}))
    assert same == {"page_views": {"0": 7, "1": -2}}
    new_life = recovery.starting_offsets(position, {"page_views": [0]}, {"page_views": "new"})
    assert json.loads(new_life) == {"page_views": {"0": -2}}
    latest = recovery.starting_offsets(position, {"page_views": [0, 1]}, {}, from_earliest=False)
    assert json.loads(latest) == {"page_views": {"0": 7, "1": -1}}
