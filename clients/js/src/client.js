// The JavaScript client of the broker: one WebSocket connection at a time, reconnected for as
// long as it may be, with every subscription recovered exactly once and in order.
//
//   import { connect } from "/v1/client.js";            // or from "broker-client" in Node.js
//   const client = await connect("ws://127.0.0.1:8000/v1/ws");
//   const sub = await client.subscribe("chat:lobby");
//   await client.publish("chat:lobby", { text: "hi" }); // -> {channel, offset, epoch}
//   for await (const message of sub) console.log(message.offset, message.data);
//
// It follows the protocol (docs/protocol.md) and behaves like the Python client
// (broker/client): a `ping` every heartbeat/2 seconds, an overdue `pong` cuts the connection;
// a close with `reconnect: true` (or a reset) reconnects after max(retry_after, backoff) with
// capped exponential backoff and full jitter; each subscription is sent again with `since` = the
// last position it delivered, and the missed publications come before the live ones. A
// `disconnect` with `reconnect: false`, or a close code a retry cannot fix, closes the client
// with Disconnected. A publish carries an idempotency key and is sent again with it after a
// lost connection, a timeout or `unavailable`, so it is published once; other requests in
// flight when a connection drops fail with ConnectionLost. Requests made while disconnected wait
// for the next connection, within their timeout.

import { Backoff } from "./backoff.js";
import { codecFor } from "./codec.js";
import {
  ClientClosed,
  ClientError,
  ConnectFailed,
  ConnectionLost,
  Disconnected,
  RequestError,
  RequestTimeout,
  ResyncNeeded,
} from "./errors.js";
import { Refused, decodeFrame, importWs, openLink, resolveUrl, watchNetwork } from "./link.js";
import { Subscribing } from "./subscribing.js";
import { Subscription } from "./subscription.js";

export {
  Backoff,
  ClientClosed,
  ClientError,
  ConnectFailed,
  ConnectionLost,
  Disconnected,
  RequestError,
  RequestTimeout,
  ResyncNeeded,
  Subscription,
};

/** Close codes after which the same client would be refused again: do not reconnect. */
export const FINAL_CLOSE_CODES = new Set([1002, 1003, 1007, 1008, 1009, 1010, 4001]);

/** In a page: the broker that served it; elsewhere the local default. */
export const DEFAULT_URL =
  typeof location !== "undefined" && location.host
    ? `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/ws`
    : "ws://127.0.0.1:8000/v1/ws";

/**
 * Connect to the broker at `url` (a `/v1/ws` endpoint, or a path such as "/v1/ws" in a page);
 * resolves once the first connection has its `welcome`, rejects with ConnectFailed if it cannot.
 * @param {string} [url]
 * @param {import("./client.js").ConnectOptions} [options]
 */
export async function connect(url = DEFAULT_URL, options = {}) {
  const client = new Client(url, options);
  await client.open();
  return client;
}

/** The client. Subscribing (`subscribe`, `unsubscribe`, server-side subscriptions, catching up)
 * is in subscribing.js, its base class. */
export class Client extends Subscribing {
  constructor(url = DEFAULT_URL, options = {}) {
    super();
    const {
      encoding = "json",
      token = null,
      requestTimeout = 10_000,
      openTimeout = 10_000,
      queueSize = 1000,
      backoff = new Backoff(),
      maxAttempts = null,
      refreshMargin = 30_000,
      publishRetryFor = 30_000,
      msgpack = undefined,
      WebSocket = undefined,
      watchNetwork = true,
    } = options;
    this.url = resolveUrl(url);
    this.encoding = encoding;
    this.requestTimeout = requestTimeout;
    this.openTimeout = openTimeout;
    this.queueSize = queueSize;
    this.backoff = backoff instanceof Backoff ? backoff : new Backoff(backoff);
    this.maxAttempts = maxAttempts;
    this.refreshMargin = refreshMargin;
    this.publishRetryFor = publishRetryFor;
    this._token = token;
    this._msgpack = msgpack;
    this._WebSocket = WebSocket;
    this._watchNetwork = watchNetwork;
    this._codec = null;
    /** @type {Map<string, Subscription>} */
    this._subs = new Map();
    this._pending = new Map();
    this._readyWaiters = new Set();
    this._nextId = 1;
    this._link = null;
    this._links = 0;
    this._failure = null;
    this._opened = false;
    this._wakeReconnect = null;
    this._unwatch = null;
  }

  // --- state ---------------------------------------------------------------------------------

  /** Whether a connection is up and every subscription has been sent on it. */
  get connected() {
    return this._link !== null && this._link.ready;
  }

  /** How many connections this client has opened so far (1 + reconnections). */
  get connections() {
    return this._links;
  }

  /** The current connection's `welcome` (null while disconnected). */
  get welcome() {
    return this._link ? this._link.welcome : null;
  }

  /** The broker's id for the current connection; each connection gets a new one. */
  get clientId() {
    return this._link ? this._link.welcome.client : null;
  }

  /** The subscriptions, by channel. */
  get subscriptions() {
    return new Map(this._subs);
  }

  /**
   * Wait for a ready connection numbered above `after`; resolves with its client id.
   * `await client.waitConnected(client.connections)` waits for the next one.
   */
  waitConnected(after = 0) {
    return new Promise((resolve, reject) => {
      if (this._failure) return reject(this._failure);
      const link = this._link;
      if (link && link.ready && link.number > after) return resolve(link.welcome.client);
      const offConnected = this.on("connected", ({ client, connection }) => {
        if (connection > after) {
          offConnected();
          offClosed();
          resolve(client);
        }
      });
      const offClosed = this.on("closed", (error) => {
        offConnected();
        offClosed();
        reject(error ?? new ClientClosed("the client is closed"));
      });
    });
  }

  /** Why the client is closed, or null while it is open. */
  get failure() {
    return this._failure;
  }

  // --- lifecycle -----------------------------------------------------------------------------

  /** Open the first connection; `connect()` calls it. */
  async open() {
    if (this._opened) throw new Error("a Client can be opened only once");
    this._opened = true;
    this._codec = await codecFor(this.encoding, this._msgpack);
    if (!this._WebSocket) this._WebSocket = globalThis.WebSocket ?? (await importWs());
    let link;
    try {
      link = await this._openLink();
    } catch (error) {
      const failure =
        error instanceof Refused
          ? new ConnectFailed(
              `${this.url} refused the connection: ${error.notice.code} ${error.notice.reason}`,
            )
          : new ConnectFailed(`cannot connect to ${this.url}: ${error.message}`, { cause: error });
      this._failure = failure;
      throw failure;
    }
    if (this._watchNetwork) this._unwatch = watchNetwork(() => this.check());
    this._serve(link);
  }

  /** Close the connection (1000) and end every subscription. Idempotent. */
  close() {
    if (this._failure === null) this._fail(new ClientClosed("the client is closed"), true);
  }

  /**
   * Check the connection now (the browser's online/offline and visibility events call it): when
   * waiting to reconnect, try at once (still honouring the server's retry_after); when connected,
   * a `ping` that gets no `pong` within `timeout` ms replaces the connection.
   */
  check(timeout = 5000) {
    if (this._failure) return;
    if (!this._link) {
      this._wakeReconnect?.();
      return;
    }
    const link = this._link;
    this._request((id) => ({ type: "ping", id }), { link, within: timeout }).catch((error) => {
      if (error instanceof RequestTimeout && link === this._link) this._abort(link, "no pong");
    });
  }

  _fail(error, clean = false) {
    if (this._failure !== null) return;
    this._failure = error;
    this._unwatch?.();
    this._wakeReconnect?.();
    for (const sub of this._subs.values()) {
      if (!sub.confirmed) sub._refuse(error);
      sub.close(clean ? null : error);
    }
    this._subs.clear();
    for (const pending of this._pending.values()) pending.fail(error);
    this._pending.clear();
    for (const waiter of this._readyWaiters) waiter.fail(error);
    this._readyWaiters.clear();
    const link = this._link;
    if (link) {
      this._detach(link);
      try {
        link.ws.close(1000);
      } catch {
        // already closed
      }
      this._link = null;
    }
    this.emit("closed", clean ? null : error);
  }

  // --- connections ---------------------------------------------------------------------------

  async _currentToken() {
    const token = this._token;
    if (typeof token === "function") return await token();
    return token;
  }

  /** A new connection that has read its `welcome`; rejects with Refused on `disconnect`. */
  async _openLink() {
    const token = await this._currentToken();
    let url = this.url;
    if (token) {
      const parsed = new URL(url);
      parsed.searchParams.set("token", token);
      url = parsed.href;
    }
    const number = this._links + 1;
    const link = await openLink(this._WebSocket, url, this._codec, number, this.openTimeout);
    this._links = number;
    return link;
  }

  /** Run `link`: read it, keep it alive, send the subscriptions, then let requests through. */
  _serve(link) {
    this._link = link;
    const { ws } = link;
    ws.onmessage = (event) => this._onFrame(link, event.data);
    ws.onclose = (event) => this._onClose(link, event.code, event.reason);
    for (const message of link.backlog) this._dispatch(link, message);
    for (const data of link.early.splice(0)) {
      if (link === this._link) this._onFrame(link, data);
    }
    if (link.closedEarly) {
      this._onClose(link, link.closedEarly.code, link.closedEarly.reason);
      return;
    }
    const heartbeat = link.welcome.heartbeat * 1000;
    link.timers.push(
      setInterval(() => {
        this._request((id) => ({ type: "ping", id }), { link, within: heartbeat }).catch((error) => {
          if (error instanceof RequestTimeout && link === this._link) {
            this._abort(link, "no pong within the heartbeat");
          }
        });
      }, heartbeat / 2),
    );
    this._scheduleRefresh(link, link.welcome.expires_at);
    // The server subscribes these itself (`subscribed` with id 0): not to be sent.
    for (const channel of link.welcome.subs ?? []) {
      const sub = this._subs.get(channel);
      if (sub) sub.sentOn = link.number;
    }
    // Resubscribe: everything is sent before any user request, so replies come in that order.
    for (const sub of this._subs.values()) this._sendSubscribe(sub, link);
    if (link !== this._link) return; // the sends found the connection gone
    link.ready = true;
    const waiters = [...this._readyWaiters];
    this._readyWaiters.clear();
    for (const waiter of waiters) waiter.send(link);
    this.emit("connected", { client: link.welcome.client, connection: link.number, welcome: link.welcome });
  }

  _detach(link) {
    for (const timer of link.timers) {
      clearInterval(timer);
      clearTimeout(timer);
    }
    link.timers = [];
    link.ws.onmessage = link.ws.onclose = null;
  }

  /** Cut `link` at once without waiting for a close handshake, and reconnect. */
  _abort(link, reason) {
    link.broken = true;
    if (typeof link.ws.terminate === "function") link.ws.terminate();
    else {
      try {
        link.ws.close(4000, reason.slice(0, 100));
      } catch {
        // closing already
      }
    }
    this._onClose(link, 1006, reason);
  }

  _onClose(link, code, reason) {
    if (link !== this._link) return;
    this._detach(link);
    this._link = null;
    for (const [id, pending] of this._pending) {
      if (pending.link === link) {
        this._pending.delete(id);
        pending.fail(new ConnectionLost("the connection was lost before the reply came"));
      }
    }
    if (this._failure) return;
    const notice = link.notice;
    code = code || 1006;
    const reconnect = notice ? notice.reconnect : link.broken || !FINAL_CLOSE_CODES.has(code);
    this.emit("disconnected", {
      code: notice ? notice.code : code,
      reason: notice ? notice.reason : reason || "",
      reconnect,
      retryAfter: notice ? notice.retry_after * 1000 : 0,
    });
    if (!reconnect) {
      this._fail(notice ? new Disconnected(notice.code, notice.reason) : new Disconnected(code, reason || ""));
      return;
    }
    this._reconnect(notice ? notice.retry_after * 1000 : 0);
  }

  async _reconnect(retryAfter) {
    let attempt = 0;
    let last = null;
    while (this.maxAttempts === null || attempt < this.maxAttempts) {
      const notBefore = Date.now() + retryAfter;
      const delay = Math.max(retryAfter, this.backoff.delay(attempt));
      attempt += 1;
      this.emit("reconnecting", { attempt, delay });
      await this._sleep(delay);
      // An early wake-up (check()) still honours the server's retry_after.
      if (Date.now() < notBefore) await this._sleep(notBefore - Date.now(), false);
      if (this._failure) return;
      try {
        const link = await this._openLink();
        if (this._failure) {
          link.ws.close(1000);
          return;
        }
        this._serve(link);
        return;
      } catch (error) {
        if (error instanceof Refused) {
          if (!error.notice.reconnect) {
            this._fail(new Disconnected(error.notice.code, error.notice.reason));
            return;
          }
          retryAfter = error.notice.retry_after * 1000;
        } else retryAfter = 0;
        last = error;
      }
    }
    this._fail(
      new ConnectFailed(
        `cannot reconnect to ${this.url} after ${attempt} attempts${last ? ": " + last.message : ""}`,
        { cause: last },
      ),
    );
  }

  _sleep(ms, wakeable = true) {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      if (wakeable) {
        this._wakeReconnect = () => {
          this._wakeReconnect = null;
          done();
        };
      }
    });
  }

  // --- authentication ------------------------------------------------------------------------

  _scheduleRefresh(link, expiresAt) {
    if (typeof this._token !== "function" || typeof expiresAt !== "number") return;
    const remaining = expiresAt * 1000 - Date.now();
    const delay = Math.max(0, remaining - Math.min(this.refreshMargin, remaining / 5));
    link.timers.push(setTimeout(() => this._refresh(link), delay));
  }

  async _refresh(link) {
    try {
      const token = await this._currentToken();
      const reply = await this._request((id) => ({ type: "refresh", id, token }), { link });
      this._scheduleRefresh(link, reply.expires_at);
    } catch (error) {
      if (link === this._link) this.emit("error", error);
    }
  }

  // --- the reader ----------------------------------------------------------------------------

  _onFrame(link, data) {
    let messages;
    try {
      messages = decodeFrame(this._codec, data);
    } catch (error) {
      // Skipping the frame could skip a publication: start over on a new connection, whose
      // recovery fetches whatever this one lost.
      this.emit("error", new ClientError(`undecodable frame: ${error.message}`));
      this._abort(link, "undecodable frame");
      return;
    }
    for (const message of messages) {
      if (link !== this._link) return;
      this._dispatch(link, message);
    }
  }

  _dispatch(link, message) {
    switch (message.type) {
      case "message": {
        const sub = this._subs.get(message.channel);
        if (sub && sub.accept(message)) this._startCatchUp(sub);
        return;
      }
      case "join":
      case "leave":
        this._subs.get(message.channel)?.presenceChange(message);
        return;
      case "gap": {
        this.emit("gap", { channel: message.channel, fromOffset: message.from_offset, toOffset: message.to_offset });
        const sub = this._subs.get(message.channel);
        if (sub && sub.gap(message)) this._startCatchUp(sub);
        return;
      }
      case "disconnect":
        link.notice = message;
        return;
      case "welcome":
        return;
      case "subscribed":
        if (message.id === 0) {
          this._serverSubscribed(link, message);
          return;
        }
        break;
      case "unsubscribed":
        if (message.id === 0) {
          // An operator unsubscribed this connection's user: id 0 answers no request of ours.
          const sub = this._subs.get(message.channel);
          if (sub) {
            this._subs.delete(message.channel);
            sub.close();
            this.emit("unsubscribed", { channel: message.channel });
          }
          return;
        }
      // falls through: the reply to our own unsubscribe
      default:
        if (message.type === "error" && (message.id === null || message.id === undefined)) {
          this.emit("error", new RequestError(message.code, message.message));
          return;
        }
    }
    // A reply to a request of ours.
    const pending = this._pending.get(message.id);
    if (pending) {
      this._pending.delete(message.id);
      pending.resolve(message);
    }
  }

  _emitResync(marker) {
    this.emit("resync", marker);
  }

  // --- requests ------------------------------------------------------------------------------

  _checkOpen() {
    if (this._failure) throw this._failure;
    if (!this._opened) throw new Error("open the client first: `await connect(url)`");
  }

  _send(link, message) {
    if (link.ws.readyState !== 1) throw new ConnectionLost("the connection was lost");
    link.ws.send(this._codec.encode(message));
  }

  /**
   * Send `build(id)` and resolve with its reply; an `error` reply rejects with RequestError.
   * Without `link`, waits for the current connection to be ready (within the timeout).
   */
  _request(build, { link = null, onReply = null, within = null } = {}) {
    return new Promise((resolve, reject) => {
      if (this._failure) {
        reject(this._failure);
        return;
      }
      const timeout = within ?? this.requestTimeout;
      const id = this._nextId++;
      let settled = false;
      let waiter = null;
      const finish = (error, reply) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this._pending.delete(id);
        if (waiter) this._readyWaiters.delete(waiter);
        if (error) reject(error);
        else resolve(reply);
      };
      const timer = setTimeout(
        () => finish(new RequestTimeout(`no reply within ${timeout / 1000} s`)),
        timeout,
      );
      const send = (target) => {
        if (settled) return;
        this._pending.set(id, {
          link: target,
          resolve: (reply) => {
            if (onReply) onReply(reply);
            if (reply.type === "error") finish(new RequestError(reply.code, reply.message));
            else finish(null, reply);
          },
          fail: (error) => finish(error),
        });
        try {
          this._send(target, build(id));
        } catch (error) {
          finish(error instanceof ClientError ? error : new ConnectionLost(String(error)));
        }
      };
      if (link) {
        if (link !== this._link) finish(new ConnectionLost("the connection was lost"));
        else send(link);
      } else if (this._link && this._link.ready) {
        send(this._link);
      } else {
        waiter = { send, fail: (error) => finish(error) };
        this._readyWaiters.add(waiter);
      }
    });
  }
}
