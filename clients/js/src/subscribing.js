// Subscribing, for the Client (its base class; Requests, requests.js, is this one's): the client's own subscriptions, the server-side
// ones, and catching up after a gap or a full queue.
//
// The client's own (`subscribe`): a Subscription is made at once and sent on the current
// connection, or on the next one; `subscribe` resolves once the server confirmed it. Every new
// connection sends each subscription again with `since` = the last position it delivered.
//
// Server-side subscriptions are the ones the server makes without a request of the client's,
// announced by `subscribed` with id 0 (docs/protocol.md, "Subscribed and unsubscribed by the
// server"): the token's `subs`, and those an operator subscribes the user to (the HTTP API).
// Each becomes a Subscription (`serverSide` true, in `client.subscriptions`) and the client
// emits `subscribed` once, before any of its messages. On a new connection the server makes the
// token's ones again itself (`welcome.subs`): the client does not send those, and fetches with
// `history` what came between its position and the server's; an operator's it sends again
// itself, with `since`.
//
// Catching up: what a lagging subscription dropped is fetched with `history`, 100 at a time, as
// its consumer makes room (see subscription.js).

import { ClientClosed, ConnectionLost, RequestError, RequestTimeout } from "./errors.js";
import { Requests } from "./requests.js";
import { Subscription, decodePublication } from "./subscription.js";

/** Most publications asked for per catch-up `history` request. */
const CATCH_UP_BATCH = 100;

export class Subscribing extends Requests {
  // --- the client's own subscriptions ---------------------------------------------------------

  /**
   * Subscribe to `channel`; once this resolves, every later publication is delivered, in order.
   * `options` may be a function: the `onMessage` callback.
   */
  async subscribe(channel, options = {}) {
    this._checkOpen();
    if (typeof options === "function") options = { onMessage: options };
    const { since = null, queueSize = this.queueSize, joinsAndLeaves = false } = options;
    if (this._subs.has(channel)) {
      throw new RequestError("already_subscribed", `already subscribed to ${JSON.stringify(channel)}`);
    }
    const sub = new Subscription(this, channel, {
      since,
      queueSize,
      joinsAndLeaves,
      callbacks: typeof options.onMessage === "function",
      decode: decodePublication,
    });
    for (const [event, key] of [
      ["message", "onMessage"],
      ["join", "onJoin"],
      ["leave", "onLeave"],
      ["resync", "onResync"],
      ["gap", "onGap"],
      ["error", "onError"],
    ]) {
      if (typeof options[key] === "function") sub.on(event, options[key]);
    }
    sub.confirmed = false;
    const confirmation = new Promise((resolve, reject) => {
      sub._confirm = resolve;
      sub._refuse = reject;
    });
    this._subs.set(channel, sub);
    const link = this._link;
    if (link && link.ready) this._sendSubscribe(sub, link);
    let timer;
    try {
      await Promise.race([
        confirmation,
        new Promise((_, reject) => {
          timer = setTimeout(
            () => reject(new RequestTimeout(`no reply to subscribe within ${this.requestTimeout / 1000} s`)),
            this.requestTimeout,
          );
        }),
      ]);
    } catch (error) {
      if (!sub.confirmed) this._abandon(sub);
      throw error;
    } finally {
      clearTimeout(timer);
    }
    return sub;
  }

  _sendSubscribe(sub, link) {
    if (sub.sentOn === link.number) return;
    sub.sentOn = link.number;
    const since = sub.position;
    const id = this._nextId++;
    this._pending.set(id, {
      link,
      resolve: (reply) => this._onSubscribed(sub, since, reply),
      fail: () => {}, // the next connection sends it again
    });
    const message = { type: "subscribe", id, channel: sub.channel };
    if (since) message.since = since;
    try {
      this._send(link, message);
    } catch {
      this._pending.delete(id);
    }
  }

  _onSubscribed(sub, since, reply) {
    if (this._subs.get(sub.channel) !== sub) return;
    if (reply.type === "error") {
      // The server made it again itself: its `subscribed` with id 0 applies.
      if (sub.serverSide && reply.code === "already_subscribed") return;
      this._subs.delete(sub.channel);
      const error = new RequestError(reply.code, reply.message);
      if (sub.confirmed) sub.close(error);
      else {
        sub.close();
        sub._refuse(error);
      }
      return;
    }
    if (reply.type === "subscribed") {
      if (sub.subscribed(reply, since)) this._startCatchUp(sub);
      if (!sub.confirmed) {
        sub.confirmed = true;
        sub._confirm();
      }
    }
  }

  _abandon(sub) {
    if (this._subs.get(sub.channel) === sub) this._subs.delete(sub.channel);
    sub.close();
    const link = this._link;
    if (link && sub.sentOn === link.number) {
      const id = this._nextId++;
      this._pending.set(id, { link, resolve: () => {}, fail: () => {} });
      try {
        this._send(link, { type: "unsubscribe", id, channel: sub.channel });
      } catch {
        this._pending.delete(id);
      }
    }
  }

  /** Stop the subscription to `channel`. */
  async unsubscribe(channel) {
    const sub = this._subs.get(channel);
    if (!sub) throw new RequestError("not_subscribed", `not subscribed to ${JSON.stringify(channel)}`);
    await this._unsubscribe(sub);
  }

  async _unsubscribe(sub) {
    if (this._subs.get(sub.channel) !== sub) {
      sub.close();
      return;
    }
    this._subs.delete(sub.channel);
    sub.close();
    const link = this._link;
    if (!link || sub.sentOn !== link.number || this._failure) return;
    try {
      await this._request((id) => ({ type: "unsubscribe", id, channel: sub.channel }), { link });
    } catch (error) {
      if (!(error instanceof RequestError || error instanceof ConnectionLost || error instanceof RequestTimeout)) {
        throw error;
      }
    }
  }

  // --- server-side subscriptions --------------------------------------------------------------

  /** `subscribed` with id 0: the server subscribed this connection itself (server-side). */
  _serverSubscribed(link, reply) {
    let sub = this._subs.get(reply.channel);
    const created = !sub;
    if (!sub) {
      sub = new Subscription(this, reply.channel, {
        since: null,
        queueSize: this.queueSize,
        joinsAndLeaves: false,
        callbacks: true, // until iterated (Subscription[Symbol.asyncIterator])
        decode: decodePublication,
        serverSide: true,
      });
      sub.confirmed = true;
      this._subs.set(reply.channel, sub);
    } else if (!sub.confirmed) {
      // subscribe() raced the server's own: the server's holds it, and ours will be refused
      // as already_subscribed.
      sub.serverSide = true;
      sub.confirmed = true;
      sub._confirm();
    }
    // The server holds it on this connection: not to be sent again on it.
    sub.sentOn = link.number;
    if (created) {
      // Before anything is delivered: a listener attaches `message` or starts iterating.
      this.emit("subscribed", {
        channel: reply.channel,
        subscription: sub,
        offset: reply.offset,
        epoch: reply.epoch,
      });
    }
    if (sub.serverSubscribed(reply)) this._startCatchUp(sub);
  }

  // --- catching up after a gap or a full queue -----------------------------------------------

  _startCatchUp(sub) {
    if (sub.catchingUp || this._failure) return;
    sub.catchingUp = true;
    this._catchUp(sub).finally(() => {
      sub.catchingUp = false;
    });
  }

  async _catchUp(sub) {
    let unavailable = 0;
    while (sub.lagging && this._subs.get(sub.channel) === sub) {
      const room = Math.min(await sub.waitRoom(), CATCH_UP_BATCH);
      const since = sub.position;
      if (!sub.lagging || sub.closed || !since) return;
      try {
        await this._request((id) => ({ type: "history", id, channel: sub.channel, since, limit: room }), {
          onReply: (reply) => this._onCaughtUp(sub, since, reply),
        });
        unavailable = 0;
      } catch (error) {
        if (error instanceof ClientClosed) return;
        if (error instanceof RequestError && error.code === "unavailable") {
          await new Promise((resolve) => setTimeout(resolve, this.backoff.delay(unavailable)));
          unavailable += 1;
        } else if (error instanceof RequestTimeout && this._link) {
          this._abort(this._link, "history timed out"); // the resubscription recovers instead
        } else if (error instanceof ConnectionLost) {
          return; // the resubscription on the next connection recovers
        }
      }
    }
  }

  _onCaughtUp(sub, since, reply) {
    const position = sub.position;
    if (
      this._subs.get(sub.channel) !== sub ||
      !sub.lagging ||
      !position ||
      position.offset !== since.offset ||
      position.epoch !== since.epoch
    ) {
      return;
    }
    if (reply.type === "error") {
      if (reply.code !== "unavailable") sub.historyUnavailable();
    } else if (reply.type === "history") {
      sub.caughtUp(reply);
    }
  }
}
