// The client's requests other than subscribing: `publish` (exactly once, with an idempotency
// key), `history`, `presence`, `ping`. Requests is the base of Subscribing (subscribing.js), and
// so of the Client; `_request`, `_send` and `_checkOpen` are the Client's.

import { Emitter } from "./emitter.js";
import { ConnectionLost, RequestError, RequestTimeout } from "./errors.js";
import { decodePublication } from "./subscription.js";

export class Requests extends Emitter {
  /**
   * Publish `data` (any value the encoding can carry) to `channel`, once; resolves with
   * `{channel, offset, epoch}`.
   *
   * Every publish carries an `idempotency_key` (a random one unless `idempotencyKey` is given):
   * the broker publishes a key once within its idempotency window and answers a repeat with the
   * first publication's offset and epoch. So after `unavailable` (maybe published), a lost
   * connection or a timeout, the same publish is sent again with the same key, backing off, for
   * up to `publishRetryFor` ms; then the last error is thrown. Other refusals throw RequestError
   * at once. With `{wait: false}`, resolves once sent, without a reply or retries.
   */
  async publish(channel, data, { wait = true, idempotencyKey = null } = {}) {
    if (data === undefined) throw new TypeError("publish needs data (null is fine, undefined is not)");
    const key = idempotencyKey ?? randomKey();
    if (wait) return await this._publishUntilAnswered(channel, data, key);
    this._checkOpen();
    const link = this._link && this._link.ready ? this._link : await this._waitReady();
    this._send(link, { type: "publish", channel, data, idempotency_key: key });
    return null;
  }

  async _publishUntilAnswered(channel, data, key) {
    const deadline = Date.now() + this.publishRetryFor;
    for (let attempt = 0; ; attempt++) {
      let error;
      try {
        const reply = await this._request((id) => ({ type: "publish", id, channel, data, idempotency_key: key }));
        return { channel: reply.channel, offset: reply.offset, epoch: reply.epoch };
      } catch (caught) {
        const retry =
          (caught instanceof RequestError && caught.code === "unavailable") ||
          caught instanceof ConnectionLost ||
          caught instanceof RequestTimeout;
        if (!retry) throw caught;
        error = caught;
      }
      const delay = this.backoff.delay(attempt);
      if (Date.now() + delay >= deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }

  _waitReady() {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._readyWaiters.delete(waiter);
        reject(new RequestTimeout(`no connection within ${this.requestTimeout / 1000} s`));
      }, this.requestTimeout);
      const waiter = {
        send: (link) => {
          clearTimeout(timer);
          resolve(link);
        },
        fail: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      };
      this._readyWaiters.add(waiter);
    });
  }

  /** The publications `channel` retains (after `since` in its epoch; at most `limit`). */
  async history(channel, { since = null, limit = null } = {}) {
    const reply = await this._request((id) => {
      const message = { type: "history", id, channel };
      if (since) message.since = since;
      if (limit !== null && limit !== undefined) message.limit = limit;
      return message;
    });
    return {
      channel: reply.channel,
      epoch: reply.epoch,
      offset: reply.offset,
      publications: reply.publications.map(decodePublication),
    };
  }

  /** The clients subscribed to `channel` (where its namespace enables presence). */
  async presence(channel) {
    const reply = await this._request((id) => ({ type: "presence", id, channel }));
    return reply.clients.map((info) => ({ client: info.client, user: info.user ?? null }));
  }

  /** Round-trip time of a `ping`, in milliseconds. */
  async ping() {
    const started = performance.now();
    await this._request((id) => ({ type: "ping", id }));
    return performance.now() - started;
  }
}

const KEY_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/** A random idempotency key: 22 URL-safe characters (132 bits). */
function randomKey() {
  const bytes = globalThis.crypto.getRandomValues(new Uint8Array(22));
  let key = "";
  for (const byte of bytes) key += KEY_ALPHABET[byte & 63];
  return key;
}
