"""The reconnect delays of DESIGN section 4."""

from tickd.stream import Backoff


def test_failures_back_off_doubling_to_thirty_seconds_and_stay_there():
    backoff = Backoff()
    assert [backoff.next(delivered=False) for _ in range(9)] == [1, 2, 4, 8, 16, 30, 30, 30, 30]


def test_a_connection_that_delivered_is_redialled_at_once_and_resets_the_sequence():
    backoff = Backoff()
    assert [backoff.next(False) for _ in range(4)] == [1, 2, 4, 8]
    assert backoff.next(delivered=True) == 0
    assert backoff.next(delivered=True) == 0
    assert backoff.next(delivered=False) == 1
