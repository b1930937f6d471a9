"""The message lifecycle's finality rules: which statuses are final and what may follow what."""

from __future__ import annotations

import itertools

from shared.domain import FINAL, SETTLED, MessageStatus, may_follow

S = MessageStatus


def test_final_statuses_are_the_contracts() -> None:
    assert {S.bounced, S.complained, S.failed, S.rejected, S.canceled, S.read} == FINAL
    assert FINAL <= SETTLED


def test_a_final_status_never_changes_except_into_complained() -> None:
    for old, new in itertools.product(FINAL, MessageStatus):
        if old == new:
            assert not may_follow(old, new)
        elif new is S.complained:
            assert may_follow(old, new) is (old is S.read)
        else:
            assert not may_follow(old, new), (old, new)


def test_complained_follows_only_what_reached_the_recipient() -> None:
    assert {old for old in MessageStatus if may_follow(old, S.complained)} == {S.sent, S.delivered, S.read}


def test_bounced_follows_only_sent() -> None:
    assert {old for old in MessageStatus if may_follow(old, S.bounced)} == {S.sent}


def test_canceled_follows_only_scheduled() -> None:
    assert {old for old in MessageStatus if may_follow(old, S.canceled)} == {S.scheduled}


def test_progress_never_moves_backwards() -> None:
    assert may_follow(S.sent, S.delivered) and may_follow(S.delivered, S.read)
    assert not may_follow(S.delivered, S.sent)
