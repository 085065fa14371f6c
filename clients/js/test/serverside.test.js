// Server-side subscriptions against a real broker: the token's `subs` and an operator's subscribe
// (POST /v1/users/{user}/subscribe) reach the client as its `subscribed` event with a
// Subscription that delivers the channel's messages (by event, or iterated); the operator's
// unsubscribe ends it; the token's survive a reconnection without a loss.

import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { after, before, test } from "node:test";
import WebSocket from "ws";
import { Client, connect } from "../src/client.js";
import { BrokerProcess, TIMEOUT, nextEvent, waitUntil, within } from "./broker.js";

const SECRET = "a-test-secret-of-at-least-thirty-two-bytes";
const broker = new BrokerProcess({
  BROKER_AUTH__MODE: "jwt",
  BROKER_AUTH__HMAC_SECRETS: JSON.stringify([SECRET]),
  BROKER_NAMESPACES__FEED__HISTORY_SIZE: "100",
  BROKER_LIMITS__RETRY_AFTER: "0.5",
});
before(() => broker.start());
after(() => broker.stop());

const base64url = (value) => Buffer.from(value).toString("base64url");

/** An HS256 JWT for user `sub`, valid for an hour. */
function token(sub, claims = {}) {
  const header = base64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const payload = base64url(JSON.stringify({ sub, exp: Math.floor(Date.now() / 1000) + 3600, ...claims }));
  const signature = createHmac("sha256", SECRET).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${signature}`;
}

async function operator(path, body) {
  const response = await fetch(broker.http(path), {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  assert.equal(response.status, 200, await response.clone().text());
  return await response.json();
}

/** The next `count` values of `sub`'s `message` events, within TIMEOUT. */
async function messages(sub, count) {
  const seen = [];
  const off = sub.on("message", (message) => seen.push(message.data));
  try {
    await waitUntil(() => seen.length >= count, TIMEOUT, `${count} messages`);
  } finally {
    off();
  }
  return seen;
}

test("an operator's subscribe is the client's subscribed event, then messages; unsubscribe ends it", async () => {
  const client = await connect(broker.url, { token: token("ann") });
  try {
    await broker.publish("feed:op", "before");
    const subscribed = nextEvent(client, "subscribed");
    const answer = await operator("/v1/users/ann/subscribe", { channel: "feed:op" });
    assert.deepEqual(answer, { user: "ann", channel: "feed:op", subscribed: 1 });
    const { channel, subscription, offset } = await subscribed;
    assert.equal(channel, "feed:op");
    assert.equal(offset, 1);
    assert.ok(subscription.serverSide);
    assert.equal(client.subscriptions.get("feed:op"), subscription);
    const delivered = messages(subscription, 2);
    await broker.publish("feed:op", "one");
    await broker.publish("feed:op", "two");
    assert.deepEqual(await delivered, ["one", "two"]);

    const unsubscribed = nextEvent(client, "unsubscribed");
    assert.equal((await operator("/v1/users/ann/unsubscribe", { channel: "feed:op" })).unsubscribed, 1);
    assert.equal((await unsubscribed).channel, "feed:op");
    assert.ok(subscription.closed);
    assert.equal(client.subscriptions.size, 0);
  } finally {
    client.close();
  }
});

test("a server-side subscription iterated from the subscribed listener gets what the operator recovered", async () => {
  const client = await connect(broker.url, { token: token("bob") });
  try {
    const first = await broker.publish("feed:since", 1);
    await broker.publish("feed:since", 2);
    const items = [];
    const done = new Promise((resolve, reject) => {
      client.once("subscribed", async ({ subscription }) => {
        try {
          for await (const message of subscription) {
            items.push(message.data);
            if (items.length === 2) break;
          }
          resolve();
        } catch (error) {
          reject(error);
        }
      });
    });
    const since = { offset: first.offset, epoch: first.epoch };
    const answer = await operator("/v1/users/bob/subscribe", { channel: "feed:since", client: client.clientId, since });
    assert.equal(answer.subscribed, 1);
    await broker.publish("feed:since", 3);
    await within(done, TIMEOUT, "two messages");
    // 2 came with the subscription (after the operator's position), 3 live.
    assert.deepEqual(items, [2, 3]);
  } finally {
    client.close();
  }
});

test("the token's subs survive a reconnection without a loss, and are announced once", async () => {
  const sockets = [];
  class Recording extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      sockets.push(this);
    }
  }
  let announced = 0;
  const seen = [];
  const client = new Client(broker.url, {
    token: token("cat", { subs: ["feed:token"] }),
    WebSocket: Recording,
    // 500 ms before reconnecting: what is published meanwhile is missed live.
    backoff: { base: 500, cap: 500, random: () => 1 },
  });
  client.on("subscribed", ({ subscription }) => {
    announced++;
    subscription.on("message", (message) => seen.push(message.data));
  });
  await client.open();
  try {
    assert.deepEqual(client.welcome.subs, ["feed:token"]);
    await waitUntil(() => announced === 1, TIMEOUT, "the subscribed event");
    await broker.publish("feed:token", 1);
    await waitUntil(() => seen.length === 1, TIMEOUT, "the first message");
    const next = client.waitConnected(client.connections);
    sockets.at(-1).terminate();
    await broker.publish("feed:token", 2);
    await broker.publish("feed:token", 3);
    await within(next, TIMEOUT, "the next connection");
    await broker.publish("feed:token", 4);
    await waitUntil(() => seen.length >= 4, TIMEOUT, "four messages");
    assert.deepEqual(seen, [1, 2, 3, 4]);
    assert.equal(announced, 1);
    const { counts } = client.subscriptions.get("feed:token");
    // 2 and 3 were fetched with history from the position the subscription had. 4 may be
    // fetched too, when it was published before that read (its live copy is then not delivered).
    assert.equal(counts.resyncs, 0);
    assert.ok(counts.fetched === 2 || counts.fetched === 3, JSON.stringify(counts));
    assert.equal(counts.live + counts.fetched, 4, JSON.stringify(counts));
  } finally {
    client.close();
  }
});
