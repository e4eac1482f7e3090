"""The desktop client's rules, with no window (chatclient/gui/rules.py)."""

from __future__ import annotations

from twisted.trial import unittest

from chatclient.gui import rules


def kinds(actions: list[rules.Action]) -> list[str | None]:
    return [request["type"] if request is not None else None for _, request in actions]


class MemberActionsTests(unittest.TestCase):
    def test_a_plain_member_may_only_write_to_others(self) -> None:
        rank = rules.my_rank("user", "member")
        self.assertEqual(kinds(rules.member_actions("alice", rank, "lobby", "bob", "member")), [None])
        self.assertEqual(rules.member_actions("alice", rank, "lobby", "alice", "member"), [])

    def test_a_moderator_moderates_those_below_only(self) -> None:
        rank = rules.my_rank("user", "moderator")
        below = kinds(rules.member_actions("alice", rank, "lobby", "bob", "member"))
        self.assertEqual(below, [None, "kick", "mute", "mute", "unmute", "ban", "ban"])
        # An equal may not be touched, nor the owner.
        self.assertEqual(kinds(rules.member_actions("alice", rank, "lobby", "carol", "moderator")), [None])
        self.assertEqual(kinds(rules.member_actions("alice", rank, "lobby", "olga", "owner")), [None])

    def test_the_owner_appoints_and_demotes_moderators(self) -> None:
        rank = rules.my_rank("user", "owner")
        self.assertEqual(kinds(rules.member_actions("olga", rank, "den", "bob", "member"))[-1], "op")
        self.assertEqual(kinds(rules.member_actions("olga", rank, "den", "carol", "moderator"))[-1], "deop")
        # Someone not in the member list gets no role change.
        self.assertNotIn("op", kinds(rules.member_actions("olga", rank, "den", "ghost", None)))

    def test_a_server_admin_outranks_every_room_role(self) -> None:
        rank = rules.my_rank("admin", None)
        actions = kinds(rules.member_actions("root", rank, "den", "olga", "owner"))
        self.assertIn("kick", actions)
        self.assertNotIn("op", actions)  # the owner's role is never changed

    def test_a_direct_message_conversation_offers_no_moderation(self) -> None:
        rank = rules.my_rank("admin", None)
        self.assertEqual(kinds(rules.member_actions("root", rank, None, "bob", "member")), [None])

    def test_the_requests_name_the_room_and_the_user(self) -> None:
        rank = rules.my_rank("user", "owner")
        for _, request in rules.member_actions("olga", rank, "den", "bob", "member")[1:]:
            assert request is not None
            self.assertEqual((request["room"], request["user"]), ("den", "bob"))


class ProblemTests(unittest.TestCase):
    def test_a_refusal_says_when_to_try_again(self) -> None:
        slow = rules.Problem("refused", "too many requests", 3, {"type": "error", "retry_after": 3})
        self.assertEqual(slow.text(), "too many requests (try again in 3 s)")
        self.assertEqual(rules.Problem("refused", "no such room").text(), "no such room")
        self.assertFalse(slow.dropped)

    def test_a_dropped_request_is_told_apart(self) -> None:
        dropped = rules.Problem("dropped", "lost: closed: gone", 9)
        self.assertTrue(dropped.dropped)
        # Only the server's own refusal carries a retry time.
        self.assertEqual(dropped.text(), "lost: closed: gone")
