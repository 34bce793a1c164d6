"""SIGTERM handling: an immediate stop outside a deferred block, a request to stop at the next step inside one."""

from __future__ import annotations

import pytest

from momil import preemption


def test_sigterm_outside_a_deferred_block_stops_at_once():
    with pytest.raises(KeyboardInterrupt):
        preemption.on_sigterm(15, None)
    assert not preemption.requested()


def test_the_first_sigterm_in_a_deferred_block_is_a_request_and_the_second_stops():
    with preemption.deferred():
        assert not preemption.requested()
        preemption.on_sigterm(15, None)
        assert preemption.requested()
        with pytest.raises(KeyboardInterrupt):
            preemption.on_sigterm(15, None)
    assert not preemption.requested()  # the request ends with the block


def test_a_preemption_is_an_interrupt():
    assert issubclass(preemption.Preempted, KeyboardInterrupt)
