// Tokens against a real broker with `auth.mode = "jwt"`: the token in the URL, a provider
// refreshing it before it expires, refusals and permissions as RequestError codes.

import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { after, before, test } from "node:test";
import { ConnectFailed, Disconnected, RequestError, connect } from "../src/client.js";
import { BrokerProcess, TIMEOUT, nextEvent, waitUntil } from "./broker.js";

const SECRET = "a-test-secret-of-at-least-thirty-two-bytes";
const broker = new BrokerProcess({
  BROKER_AUTH__MODE: "jwt",
  BROKER_AUTH__HMAC_SECRETS: JSON.stringify([SECRET]),
  BROKER_AUTH__LEEWAY: "0",
});
before(() => broker.start());
after(() => broker.stop());

const base64url = (value) => Buffer.from(value).toString("base64url");

/** An HS256 JWT for user `sub`, valid for `ttl` seconds. */
function token(sub, ttl, claims = {}) {
  const header = base64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const payload = base64url(
    JSON.stringify({
      sub,
      exp: Math.floor(Date.now() / 1000) + ttl,
      channels: ["chat:*"],
      publish: ["chat:*"],
      ...claims,
    }),
  );
  const signature = createHmac("sha256", SECRET).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${signature}`;
}

test("a provider's token is refreshed before it expires: the connection outlives it", async () => {
  const issued = [];
  const client = await connect(broker.url, {
    token: () => {
      issued.push(Date.now());
      return token("42", 3);
    },
  });
  try {
    assert.equal(client.welcome.user, "42");
    const expiresAt = client.welcome.expires_at;
    assert.ok(expiresAt > Date.now() / 1000);
    const sub = await client.subscribe("chat:auth");
    // Two refreshes: the connection is then well past its first token's expiry.
    await waitUntil(() => issued.length >= 3, TIMEOUT, "two refreshes");
    await new Promise((resolve) => setTimeout(resolve, 500));
    assert.ok(Date.now() / 1000 > expiresAt, "past the first token's expiry");
    assert.equal(client.connections, 1);
    assert.ok(client.connected);
    const reply = await client.publish("chat:auth", "still here");
    const { value } = await sub[Symbol.asyncIterator]().next();
    assert.deepEqual([value.offset, value.data, value.publisher], [reply.offset, "still here", "42"]);
  } finally {
    client.close();
  }
});

test("a fixed token that expires ends the client once the server refuses it", async () => {
  const client = await connect(broker.url, { token: token("7", 1), backoff: { base: 10, cap: 50 } });
  const closed = nextEvent(client, "closed");
  const notice = nextEvent(client, "disconnected");
  const first = await notice;
  assert.deepEqual([first.code, first.reconnect], [4001, true]); // "token expired": try again
  const error = await closed; // ...with the same, expired, token: refused for good
  assert.ok(error instanceof Disconnected);
  assert.equal(error.code, 4001);
});

test("a bad token fails the first connect; a forbidden channel is permission_denied", async () => {
  await assert.rejects(connect(broker.url, { token: token("1", 60) + "x" }), (error) => {
    assert.ok(error instanceof ConnectFailed);
    assert.match(error.message, /4001/);
    return true;
  });
  const client = await connect(broker.url, { token: token("1", 60) });
  try {
    await assert.rejects(client.subscribe("secret:plans"), (error) => {
      assert.ok(error instanceof RequestError);
      assert.equal(error.code, "permission_denied");
      return true;
    });
    assert.ok(client.connected);
  } finally {
    client.close();
  }
});
