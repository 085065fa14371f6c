"""Centrifugo's client protocol v2 (JSON): decoding commands, encoding replies, rendering the
broker's messages, and the code tables. Pure: no sockets."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import messages as ours
from protocol.centrifugo import messages as cf
from protocol.centrifugo.codes import (
    DISCONNECTS,
    ERROR_CODES,
    SUBSCRIPTION_EXPIRED,
    disconnect_for,
    error_code,
)
from protocol.centrifugo.framing import BadCommand, decode_commands, encode_reply
from protocol.centrifugo.render import (
    INTERNAL_IDS,
    ConnectAssembly,
    InsufficientState,
    RequestBook,
    ServerSubscribed,
    SubscribeNote,
    render,
)
from protocol.errors import CloseCode, ErrorCode


def test_several_commands_per_frame_and_the_empty_pong() -> None:
    frame = (
        b'{"id":1,"connect":{"name":"js","token":""}}\n'
        b'{"id":2,"subscribe":{"channel":"news","recover":true,"offset":7,"epoch":"e"}}\n'
        b"\n{}\n"
        b'{"id":3,"publish":{"channel":"news","data":{"a":[1,2]}}}'
    )
    connect, subscribe, pong, publish = decode_commands(frame)
    assert isinstance(connect, cf.Command) and connect.connect is not None
    assert connect.connect.name == "js"
    assert isinstance(subscribe, cf.Command) and subscribe.subscribe is not None
    assert (subscribe.subscribe.recover, subscribe.subscribe.offset) == (True, 7)
    assert pong == cf.Command() and cf.requests_of(pong) == []
    assert isinstance(publish, cf.Command) and publish.publish is not None
    assert bytes(publish.publish.data) == b'{"a":[1,2]}'  # passed through undecoded


@pytest.mark.parametrize(
    ("line", "request_id"),
    [
        (b'{"id":4,"history":{"channel":"x","limit":"ten"}}', 4),
        (b'{"id":5,"subscribe":', 0),
        (b'{"id":-1}', 0),
        (b"[" * 100_000, 0),
        (b'{"id":6,"publish":{"channel":"x","data":\xff}}', 0),
    ],
)
def test_bad_lines_are_values_naming_the_command(line: bytes, request_id: int) -> None:
    (bad,) = decode_commands(line)
    assert isinstance(bad, BadCommand) and bad.id == request_id and bad.message


def test_replies_leave_out_zero_values_like_centrifugo() -> None:
    assert encode_reply(cf.PING) == b"{}"
    # ... except where Centrifugo writes them: the SDKs read these fields unconditionally.
    empty = cf.Reply(id=1, presence_stats=cf.PresenceStatsResult())
    assert encode_reply(empty) == b'{"id":1,"presence_stats":{"num_clients":0,"num_users":0}}'
    nobody = cf.Reply(id=2, presence=cf.PresenceResult())
    assert encode_reply(nobody) == b'{"id":2,"presence":{"presence":{}}}'
    history = cf.Reply(id=3, history=cf.HistoryResult())
    assert encode_reply(history) == (
        b'{"id":3,"history":{"publications":[],"epoch":"","offset":0}}'
    )
    reply = cf.Reply(id=3, subscribe=cf.SubscribeResult(epoch="e", offset=0))
    assert encode_reply(reply) == b'{"id":3,"subscribe":{"epoch":"e"}}'
    assert encode_reply(cf.Reply(id=9, publish=cf.PublishResult())) == b'{"id":9,"publish":{}}'


def publication(offset: int) -> ours.Publication:
    return ours.Publication(
        channel="c", offset=offset, epoch="e", data=msgspec.Raw(b"[1]"), from_="pub"
    )


def test_render_subscribed_with_what_the_reader_noted() -> None:
    book = RequestBook(subscribes={4: SubscribeNote(was_recovering=True, recoverable=True)})
    message = ours.Subscribed(
        id=4, channel="c", epoch="e", offset=2, recovered=True, publications=[publication(2)]
    )
    reply = render(message, book)
    assert isinstance(reply, cf.Reply) and reply.subscribe is not None
    assert encode_reply(reply) == (
        b'{"id":4,"subscribe":{"recoverable":true,"epoch":"e","publications":'
        b'[{"data":[1],"info":{"user":"","client":"pub"},"offset":2}],"recovered":true,"offset":2,'
        b'"positioned":true,"was_recovering":true}}'
    )
    assert book.subscribes == {}


def test_render_presence_stats_and_reverse_history_by_request() -> None:
    book = RequestBook(presence_stats={1}, reverse_history={2})
    members = [ours.ClientInfo(client="a", user="u"), ours.ClientInfo(client="b", user="u")]
    stats = render(ours.PresenceResult(id=1, channel="c", clients=members), book)
    assert isinstance(stats, cf.Reply)
    assert stats.presence_stats == cf.PresenceStatsResult(num_clients=2, num_users=1)
    presence = render(ours.PresenceResult(id=3, channel="c", clients=members), book)
    assert isinstance(presence, cf.Reply) and presence.presence is not None
    assert sorted(presence.presence.presence) == ["a", "b"]
    history = ours.HistoryResult(
        id=2, channel="c", epoch="e", offset=3, publications=[publication(2), publication(3)]
    )
    reply = render(history, book)
    assert isinstance(reply, cf.Reply) and reply.history is not None
    assert [p.offset for p in reply.history.publications] == [3, 2]
    assert book == RequestBook()


def test_render_pushes_gap_and_errors() -> None:
    book = RequestBook()
    join = render(ours.Join(channel="c", client="x", user=None), book)
    assert isinstance(join, cf.Reply)
    assert (
        encode_reply(join) == b'{"push":{"channel":"c","join":{"info":{"user":"","client":"x"}}}}'
    )
    assert render(ours.Gap(channel="c", from_offset=1, to_offset=2), book) == InsufficientState("c")
    slow = render(ours.Disconnect(code=4008, reason="slow consumer", reconnect=True), book)
    assert isinstance(slow, cf.Reply)
    assert encode_reply(slow) == (
        b'{"push":{"disconnect":{"code":3008,"reason":"slow","reconnect":true}}}'
    )
    error = render(ours.Error(id=5, code="rate_limited", message="slow down"), book)
    assert isinstance(error, cf.Reply) and error.error == cf.Error(
        code=111, message="slow down", temporary=True
    )
    not_subscribed = render(ours.Error(id=6, code="not_subscribed", message="no"), book)
    assert isinstance(not_subscribed, cf.Reply)
    assert not_subscribed.unsubscribe == cf.UnsubscribeResult()
    assert render(ours.Error(id=None, code="internal", message="x"), book) is None


def test_every_code_of_ours_has_a_centrifugo_meaning() -> None:
    assert set(DISCONNECTS) == set(CloseCode)
    assert set(ERROR_CODES) == set(ErrorCode) - {ErrorCode.NOT_SUBSCRIBED}
    # Terminal for the SDKs exactly where the broker says not to reconnect.
    assert not disconnect_for(CloseCode.UNAUTHORIZED, "", False).reconnect
    assert disconnect_for(CloseCode.SLOW_CONSUMER, "", True).reconnect
    assert disconnect_for(CloseCode.GOING_AWAY, "", True).code == 3001
    assert disconnect_for(3010, "insufficient state", True).code == 3010
    assert error_code("no such code") == 100


def test_a_publication_from_a_new_stream_is_insufficient_state() -> None:
    book = RequestBook()
    render(ours.Subscribed(id=1, channel="c", epoch="e", offset=0), book)
    assert isinstance(render(publication(1), book), cf.Reply)
    restarted = ours.Publication(channel="c", offset=1, epoch="new", data=msgspec.Raw(b"1"))
    assert render(restarted, book) == InsufficientState("c")
    render(ours.Unsubscribed(id=2, channel="c"), book)
    assert book.epochs == {}


@given(st.binary(max_size=300))
def test_decoding_never_raises(frame: bytes) -> None:
    for command in decode_commands(frame):
        assert isinstance(command, cf.Command | BadCommand)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(st.sampled_from(["id", "subscribe", "channel", "data"]), children)
        ),
        max_leaves=10,
    )
)
def test_any_json_is_a_command_or_a_bad_command(value: object) -> None:
    (command,) = decode_commands(msgspec.json.encode(value)) or [cf.Command()]
    assert isinstance(command, cf.Command | BadCommand)


def test_server_side_subscribes_assemble_the_connect_reply() -> None:
    base = INTERNAL_IDS
    book = RequestBook(
        subscribes={base: SubscribeNote(was_recovering=True, recoverable=True)},
        connect=ConnectAssembly(
            request_id=1, result=cf.ConnectResult(client="c"), waiting={base: "a", base + 1: "b"}
        ),
    )
    # The first answer alone renders nothing: the reply waits for every server-side subscribe.
    first = ours.Subscribed(id=base, channel="a", epoch="e", offset=3, recovered=True)
    assert render(first, book) is None
    refused = ours.Error(id=base + 1, code="limit_exceeded", message="too many")
    reply = render(refused, book)
    assert isinstance(reply, cf.Reply) and reply.id == 1 and reply.connect is not None
    assert list(reply.connect.subs) == ["a"]
    sub = reply.connect.subs["a"]
    assert (sub.recovered, sub.was_recovering, sub.offset, sub.epoch) == (True, True, 3, "e")
    assert book.connect is None and book.epochs == {"a": "e"}


def test_ended_subscriptions_are_unsubscribe_pushes() -> None:
    book = RequestBook(unsubscribes={INTERNAL_IDS: SUBSCRIPTION_EXPIRED})
    expired = render(ours.Unsubscribed(id=INTERNAL_IDS, channel="p:x"), book)
    assert isinstance(expired, cf.Reply)
    assert encode_reply(expired) == (
        b'{"push":{"channel":"p:x","unsubscribe":{"code":2501,"reason":"subscription expired"}}}'
    )
    by_operator = render(ours.Unsubscribed(id=0, channel="c"), book)
    assert isinstance(by_operator, cf.Reply) and by_operator.push is not None
    assert by_operator.push.unsubscribe == cf.Unsubscribe(code=2000, reason="server unsubscribe")
    # An expiry that found the subscription gone already says nothing.
    book.unsubscribes[INTERNAL_IDS + 1] = SUBSCRIPTION_EXPIRED
    gone = ours.Error(id=INTERNAL_IDS + 1, code="not_subscribed", message="no")
    assert render(gone, book) is None and book == RequestBook()


def test_a_server_side_subscribe_after_connect_is_a_subscribe_push() -> None:
    book = RequestBook(recoverable=lambda channel: channel == "kept")
    data = msgspec.Raw(b"7")
    missed = ours.Publication(channel="kept", offset=3, epoch="e", data=data)
    subscribed = ours.Subscribed(
        id=0, channel="kept", epoch="e", offset=3, recovered=True, publications=[missed]
    )
    rendered = render(subscribed, book)
    assert isinstance(rendered, ServerSubscribed)
    assert [encode_reply(reply) for reply in rendered.replies] == [
        b'{"push":{"channel":"kept","subscribe":'
        b'{"recoverable":true,"epoch":"e","offset":3,"positioned":true}}}',
        b'{"push":{"channel":"kept","pub":{"data":7,"offset":3}}}',
    ]
    assert book.epochs == {"kept": "e"}
    plain = render(ours.Subscribed(id=0, channel="live", epoch="f", offset=0), book)
    assert isinstance(plain, ServerSubscribed)
    assert [encode_reply(reply) for reply in plain.replies] == [
        b'{"push":{"channel":"live","subscribe":{"epoch":"f"}}}'
    ]
    # The hub refused it (subscribed meanwhile, or at the limit): nothing for the client.
    refused = ours.Error(id=0, code="already_subscribed", message="already")
    assert render(refused, book) is None


def test_history_since_another_epoch_is_error_112() -> None:
    book = RequestBook(history_epochs={1: "old", 2: "e"}, reverse_history={1})
    other = render(ours.HistoryResult(id=1, channel="h", epoch="e", offset=4), book)
    assert isinstance(other, cf.Reply) and other.error is not None
    assert other.error.code == 112
    same = render(ours.HistoryResult(id=2, channel="h", epoch="e", offset=4), book)
    assert isinstance(same, cf.Reply) and same.history is not None
    assert book == RequestBook()
