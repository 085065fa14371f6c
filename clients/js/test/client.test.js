// The client against a real broker process: requests, both encodings, batches, callbacks,
// errors, heartbeat and tokens.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import WebSocket from "ws";
import {
  Backoff,
  ConnectFailed,
  Disconnected,
  RequestError,
  connect,
} from "../src/client.js";
import { BrokerProcess, TIMEOUT, nextEvent, within } from "./broker.js";

const broker = new BrokerProcess({
  BROKER_NAMESPACES__CHAT__HISTORY_SIZE: "100",
  BROKER_NAMESPACES__CHAT__PRESENCE: "true",
  BROKER_NAMESPACES__CHAT__JOIN_LEAVE: "true",
  BROKER_WEBSOCKET__HEARTBEAT: "1.0",
  BROKER_WEBSOCKET__HEARTBEAT_GRACE: "0.5",
});
before(() => broker.start());
after(() => broker.stop());

let channels = 0;
const fresh = (prefix = "chat") => `${prefix}:c${++channels}-${process.pid}`;

for (const encoding of ["json", "msgpack"]) {
  describe(`in ${encoding}`, () => {
    test("a publication reaches an iterating subscriber with its offset and epoch", async () => {
      const alice = await connect(broker.url, { encoding });
      const bob = await connect(broker.url, { encoding });
      try {
        const channel = fresh();
        const sub = await alice.subscribe(channel);
        const data = { text: "hi", n: 1.5, list: [1, "two", null], nested: { ok: true } };
        const reply = await bob.publish(channel, data);
        assert.equal(reply.channel, channel);
        assert.equal(reply.offset, 1);
        assert.equal(typeof reply.epoch, "string");
        const { value } = await sub[Symbol.asyncIterator]().next();
        assert.deepEqual(value, {
          channel,
          offset: 1,
          epoch: reply.epoch,
          data,
          publisher: bob.clientId,
        });
        assert.deepEqual(sub.position, { offset: 1, epoch: reply.epoch });
      } finally {
        alice.close();
        bob.close();
      }
    });

    test("a burst arrives in order, batches included, through a callback", async () => {
      let batches = 0;
      class Counting extends WebSocket {
        constructor(url, protocols) {
          super(url, protocols);
          this.addEventListener("message", ({ data }) => {
            const first = typeof data === "string" ? data.charCodeAt(0) : new Uint8Array(data)[0];
            // "[" in JSON; a MessagePack array header (fixarray, array 16, array 32).
            if (first === 0x5b || (first & 0xf0) === 0x90 || first === 0xdc || first === 0xdd) batches++;
          });
        }
      }
      const alice = await connect(broker.url, { encoding, WebSocket: Counting });
      try {
        const channel = fresh();
        const seen = [];
        let done;
        const all = new Promise((resolve) => (done = resolve));
        await alice.subscribe(channel, (message) => {
          seen.push(message.data);
          if (seen.length === 300) done();
        });
        for (let i = 0; i < 300; i++) alice.publish(channel, i, { wait: false });
        await all;
        assert.deepEqual(seen, Array.from({ length: 300 }, (_, i) => i));
        assert.ok(batches > 0, "the broker sent batch frames");
      } finally {
        alice.close();
      }
    });
  });
}

test("history, presence, join and leave", async () => {
  const alice = await connect(broker.url);
  const bob = await connect(broker.url);
  try {
    const channel = fresh();
    const sub = await alice.subscribe(channel, { joinsAndLeaves: true });
    const joined = nextEvent(sub, "join");
    const bobSub = await bob.subscribe(channel);
    assert.deepEqual(await joined, { kind: "join", channel, client: bob.clientId, user: null });
    const members = await alice.presence(channel);
    assert.deepEqual(
      members.map((m) => m.client).sort(),
      [alice.clientId, bob.clientId].sort(),
    );
    const first = await bob.publish(channel, "one");
    await bob.publish(channel, "two");
    const page = await alice.history(channel, { since: { offset: first.offset, epoch: first.epoch } });
    assert.deepEqual(page.publications.map((p) => p.data), ["two"]);
    assert.equal(page.offset, 2);
    const left = nextEvent(sub, "leave");
    await bobSub.unsubscribe();
    assert.equal((await left).client, bob.clientId);
    const iterator = sub[Symbol.asyncIterator]();
    assert.equal((await iterator.next()).value.kind, "join");
    assert.equal((await iterator.next()).value.data, "one");
  } finally {
    alice.close();
    bob.close();
  }
});

test("subscribing with since delivers what came after it first, then live ones", async () => {
  const client = await connect(broker.url);
  try {
    const channel = fresh();
    const replies = [];
    for (let n = 1; n <= 5; n++) replies.push(await client.publish(channel, n));
    const sub = await client.subscribe(channel, { since: { offset: 2, epoch: replies[0].epoch } });
    await client.publish(channel, 6);
    const iterator = sub[Symbol.asyncIterator]();
    const got = [];
    for (let i = 0; i < 4; i++) got.push((await iterator.next()).value.data);
    assert.deepEqual(got, [3, 4, 5, 6]);
    assert.equal(sub.counts.recovered, 3);
  } finally {
    client.close();
  }
});

test("a consumer slower than its queue loses nothing: the client fetches what it dropped", async () => {
  const client = await connect(broker.url);
  try {
    const channel = fresh();
    const sub = await client.subscribe(channel, { queueSize: 10 });
    for (let n = 1; n <= 60; n++) client.publish(channel, n, { wait: false });
    await client.ping(); // replies in order: the publishes have been handled
    const iterator = sub[Symbol.asyncIterator]();
    const got = [];
    while (got.length < 60) got.push((await iterator.next()).value.offset);
    assert.deepEqual(got, Array.from({ length: 60 }, (_, i) => i + 1));
    assert.ok(sub.counts.skipped > 0 && sub.counts.fetched > 0, JSON.stringify(sub.counts));
    assert.equal(sub.counts.resyncs, 0);
  } finally {
    client.close();
  }
});

test("waitConnected resolves with the next connection's client id", async () => {
  const sockets = [];
  class Recording extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      sockets.push(this);
    }
  }
  const client = await connect(broker.url, { WebSocket: Recording, backoff: { base: 10, cap: 50 } });
  try {
    assert.equal(await client.waitConnected(), client.clientId);
    const next = client.waitConnected(client.connections);
    sockets[0].terminate(); // a reset: the client reconnects
    const id = await within(next, TIMEOUT, "the next connection");
    assert.equal(client.connections, 2);
    assert.equal(id, client.clientId);
  } finally {
    client.close();
  }
});

test("a publish is sent once per idempotency key, and retried with it when the connection drops", async () => {
  const sockets = [];
  class Recording extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      sockets.push(this);
    }
  }
  const client = await connect(broker.url, { WebSocket: Recording, backoff: { base: 10, cap: 50 } });
  try {
    const channel = fresh();
    const first = await client.publish(channel, "a", { idempotencyKey: "key-1" });
    const again = await client.publish(channel, "a", { idempotencyKey: "key-1" });
    assert.deepEqual(again, first);
    // Cut the connection right behind the publish: it may or may not have arrived.
    const pending = client.publish(channel, "b");
    sockets.at(-1).terminate();
    const reply = await pending;
    assert.equal(client.connections, 2);
    const page = await client.history(channel);
    assert.deepEqual(page.publications.map((p) => [p.offset, p.data]), [[1, "a"], [2, "b"]]);
    assert.equal(reply.offset, 2);
  } finally {
    client.close();
  }
});

test("errors carry the server's code and leave the connection open", async () => {
  const client = await connect(broker.url);
  try {
    await assert.rejects(client.history(fresh("plain")), (error) => {
      assert.ok(error instanceof RequestError);
      assert.equal(error.code, "bad_request");
      return true;
    });
    await assert.rejects(client.publish("bad channel!", 1), { code: "bad_request" });
    const channel = fresh();
    await client.subscribe(channel);
    await assert.rejects(client.subscribe(channel), { code: "already_subscribed" });
    await assert.rejects(client.unsubscribe(fresh()), { code: "not_subscribed" });
    assert.ok((await client.ping()) >= 0);
    assert.equal(client.connections, 1);
  } finally {
    client.close();
  }
});

test("an unreachable broker fails the first connect with ConnectFailed", async () => {
  await assert.rejects(connect("ws://127.0.0.1:1/v1/ws"), ConnectFailed);
});

test("pings keep an idle connection open past the heartbeat", async () => {
  const client = await connect(broker.url);
  try {
    assert.equal(client.welcome.heartbeat, 1);
    await new Promise((resolve) => setTimeout(resolve, 3000)); // the broker's limit is 1.5 s
    assert.ok(client.connected);
    assert.equal(client.connections, 1);
  } finally {
    client.close();
  }
});

test("a disconnect with reconnect: false closes the client with Disconnected", async () => {
  const client = await connect(broker.url);
  const closed = nextEvent(client, "closed");
  const sub = await client.subscribe(fresh());
  await fetch(broker.http(`/v1/clients/${client.clientId}/disconnect`), { method: "POST" });
  const error = await closed;
  assert.ok(error instanceof Disconnected);
  assert.equal(error.code, 4010);
  await assert.rejects(sub[Symbol.asyncIterator]().next(), Disconnected);
  await assert.rejects(client.publish(fresh(), 1), Disconnected);
});

test("the token goes in the URL, from a provider called on every connection", async () => {
  const sockets = [];
  class Recording extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      sockets.push(this);
    }
  }
  let calls = 0;
  const client = await connect(broker.url, {
    WebSocket: Recording,
    token: async () => `t${++calls}`,
    backoff: { base: 10, cap: 50 },
  });
  try {
    const reconnected = nextEvent(client, "connected");
    sockets.at(-1).terminate(); // a reset: the client reconnects, with a fresh token
    assert.equal((await reconnected).connection, 2);
  } finally {
    client.close();
  }
  const second = await connect(broker.url, { WebSocket: Recording, token: "fixed" });
  second.close();
  const urls = sockets.map((ws) => new URL(ws.url));
  assert.deepEqual(
    urls.map((u) => u.searchParams.get("token")),
    ["t1", "t2", "fixed"],
  );
  assert.equal(urls[0].pathname, "/v1/ws");
});

test("backoff delays stay within the capped exponential ceiling", () => {
  const backoff = new Backoff({ base: 100, cap: 1000, random: () => 1 });
  assert.deepEqual([0, 1, 2, 3, 4, 10, 100].map((a) => backoff.delay(a)), [100, 200, 400, 800, 1000, 1000, 1000]);
  const jittered = new Backoff({ base: 100, cap: 1000 });
  for (let i = 0; i < 100; i++) {
    const delay = jittered.delay(3);
    assert.ok(delay >= 0 && delay <= 800);
  }
  assert.throws(() => new Backoff({ factor: 0.5 }), RangeError);
});

