// One channel subscription: its stream position, its delivery (a bounded queue for async
// iteration, or callbacks) and recovery.
//
// The subscription keeps the last {offset, epoch} it delivered: that is the `since` of the next
// resubscription, and the line below which a publication is a duplicate. So whatever happens to
// connections, each publication is delivered once, in offset order.
//
// A full queue never blocks the client's reader. The subscription starts *lagging* instead: it
// drops what comes live, and once the consumer has made room the client fetches what was dropped
// with `history` and goes live again where that reply ends. A `gap` from the server and a hole in
// the offsets take the same path. When the missed publications cannot be had any more (the
// broker restarted in memory mode, history no longer holds them), the subscription emits
// `resync` and, for an iterating consumer, throws a ResyncNeeded from the iterator once; then it
// goes on with the publications after the new position.

import { Emitter } from "./emitter.js";
import { ResyncNeeded } from "./errors.js";

export class Subscription extends Emitter {
  /**
   * @param {object} client the Client
   * @param {string} channel
   * @param {{since?: {offset: number, epoch: string}|null, queueSize: number,
   *   joinsAndLeaves: boolean, callbacks: boolean, decode: (p: object) => object}} options
   */
  constructor(client, channel, { since, queueSize, joinsAndLeaves, callbacks, decode, serverSide = false }) {
    super();
    if (!(queueSize >= 1)) throw new RangeError("queueSize must be at least 1");
    this.channel = channel;
    /** Made by the server (the token's `subs`, an operator), not by `subscribe()`. */
    this.serverSide = serverSide;
    this._queueSize = queueSize;
    this._client = client;
    this._decode = decode;
    this._joinsAndLeaves = joinsAndLeaves;
    /** Deliver through the `message` event rather than a queue. */
    this._callbacks = callbacks;
    this._size = callbacks ? Infinity : queueSize;
    this._items = [];
    /** @type {string|null} the epoch of the last delivered position; null before `subscribed` */
    this.epoch = since ? since.epoch : null;
    /** the offset of the last delivered publication */
    this.offset = since ? since.offset : 0;
    this.lagging = false;
    this._seen = this.offset;
    this.catchingUp = false;
    /** the number of the connection the last `subscribe` went out on (0: none yet) */
    this.sentOn = 0;
    this.closed = false;
    this._error = null;
    this._wakeUp = null;
    this._roomWaiters = [];
    this.counts = { live: 0, recovered: 0, fetched: 0, skipped: 0, resyncs: 0 };
  }

  /** The last delivered position, to pass as `since` later; null before the first `subscribed`. */
  get position() {
    return this.epoch === null ? null : { offset: this.offset, epoch: this.epoch };
  }

  /** Items queued for the iterating consumer and not yet taken. */
  get queued() {
    return this._items.length;
  }

  /** Stop the subscription; what is queued can still be iterated, then iteration ends. */
  async unsubscribe() {
    await this._client._unsubscribe(this);
  }

  [Symbol.asyncIterator]() {
    if (this._callbacks && this.serverSide) {
      // A server-side subscription delivers by `message` event until it is first iterated;
      // from then on it queues for the iterator too.
      this._callbacks = false;
      this._size = this._queueSize;
    }
    return {
      next: () => this._next(),
      // Leaving a loop early (break) leaves the subscription as it is: iterate again later,
      // or call unsubscribe().
      return: async () => ({ value: undefined, done: true }),
      [Symbol.asyncIterator]() {
        return this;
      },
    };
  }

  async _next() {
    for (;;) {
      if (this._items.length) {
        const item = this._items.shift();
        if (this.room() >= this._lowWater()) this._wakeRoom();
        if (item instanceof ResyncNeeded) throw item;
        return { value: item, done: false };
      }
      if (this.closed) {
        if (this._error) throw this._error;
        return { value: undefined, done: true };
      }
      await new Promise((resolve) => (this._wakeUp = resolve));
    }
  }

  // --- for the client (called by its reader: never waits) ------------------------------------

  /** Apply a `subscribed` reply to a `subscribe` sent with `since`; true when a fetch is due. */
  subscribed(reply, since) {
    this.lagging = false;
    let needsFetch = false;
    if (!since) {
      this.epoch = reply.epoch;
      this.offset = reply.offset;
    } else if (reply.recovered) {
      for (const publication of reply.publications) {
        needsFetch = this.accept(publication, "recovered") || needsFetch;
      }
      this.epoch = reply.epoch;
    } else {
      this.resync(reply.epoch, reply.offset);
    }
    this._seen = Math.max(this._seen, this.offset);
    return needsFetch;
  }

  /**
   * Apply a `subscribed` with id 0: the server subscribed the connection itself. The first one
   * starts the subscription at its position (with the publications it recovered, when the
   * operator gave a position); a later one (the token's `subs` on a new connection, from the
   * channel's current position) is a gap from the subscription's position: true when that must
   * be fetched.
   */
  serverSubscribed(reply) {
    if (this.epoch === null) {
      const recovered = reply.recovered ? reply.publications : [];
      this.epoch = reply.epoch;
      this.offset = recovered.length ? recovered[0].offset - 1 : reply.offset;
      this._seen = this.offset;
      let needsFetch = false;
      for (const publication of recovered) {
        needsFetch = this.accept(publication, "recovered") || needsFetch;
      }
      return needsFetch;
    }
    if (reply.epoch !== this.epoch) {
      this.resync(reply.epoch, reply.offset);
      return false;
    }
    this._seen = Math.max(this._seen, reply.offset);
    if (reply.offset <= this.offset || this.lagging) return false;
    this.lagging = true;
    return true;
  }

  /** Deliver a publication unless it is a duplicate or the subscription lags; true when it
   * starts lagging (the client must then catch up). */
  accept(publication, source = "live") {
    if (this.epoch !== null && publication.epoch !== this.epoch) {
      this.resync(publication.epoch, publication.offset - 1);
    }
    const offset = publication.offset;
    if (offset <= this.offset) return false;
    if (offset > this._seen) this._seen = offset;
    if (this.lagging) {
      this.counts.skipped += 1;
      return false;
    }
    if (offset !== this.offset + 1 || this._items.length >= this._size) {
      this.lagging = true;
      this.counts.skipped += 1;
      return true;
    }
    this.offset = offset;
    this.counts[source] += 1;
    this._deliver(this._decode(publication));
    return false;
  }

  /** The server dropped publications for us; true when they must be fetched. */
  gap(gap) {
    this._seen = Math.max(this._seen, gap.to_offset);
    this.emit("gap", { channel: this.channel, fromOffset: gap.from_offset, toOffset: gap.to_offset });
    if (gap.to_offset <= this.offset || this.lagging) return false;
    this.lagging = true;
    return true;
  }

  /** Apply a `history` reply to a catch-up request made from the current position. */
  caughtUp(reply) {
    if (reply.epoch !== this.epoch) {
      this.resync(reply.epoch, reply.offset);
      return;
    }
    const missed = reply.publications.filter((p) => p.offset > this.offset);
    if (reply.offset > this.offset && (!missed.length || missed[0].offset !== this.offset + 1)) {
      this.resync(reply.epoch, Math.max(reply.offset, this._seen));
      return;
    }
    for (const publication of missed) {
      if (publication.offset !== this.offset + 1 || this._items.length >= this._size) break;
      this.offset = publication.offset;
      this.counts.fetched += 1;
      this._deliver(this._decode(publication));
    }
    if (this.offset >= reply.offset) this.lagging = false;
  }

  /** A catch-up `history` was refused for good (no history in this namespace). */
  historyUnavailable() {
    this.resync(this.epoch, this._seen);
  }

  presenceChange(change) {
    const item = {
      kind: change.type,
      channel: change.channel,
      client: change.client,
      user: change.user ?? null,
    };
    this.emit(change.type, item);
    if (this._callbacks || !this._joinsAndLeaves || this._items.length >= this._size) return;
    this._push(item);
  }

  /** Deliver a ResyncNeeded and go on live after `offset` of `epoch`. */
  resync(epoch, offset) {
    this.epoch = epoch;
    this.offset = offset;
    this._seen = offset;
    this.lagging = false;
    this.counts.resyncs += 1;
    const marker = new ResyncNeeded(this.channel, epoch, offset);
    this.emit("resync", marker);
    this._client._emitResync(marker);
    if (this._callbacks) return;
    const last = this._items[this._items.length - 1];
    if (last instanceof ResyncNeeded) this._items[this._items.length - 1] = marker;
    else this._push(marker);
  }

  /** No more items: iteration ends after the queued ones, throwing `error` if given. */
  close(error = null) {
    if (this.closed) return;
    this.closed = true;
    this._error = error;
    if (error) this.emit("error", error);
    this.emit("closed", error);
    this._wake();
    this._wakeRoom();
  }

  room() {
    return Math.max(0, this._size - this._items.length);
  }

  /** Wait until the consumer has freed at least half the queue; the free room. */
  async waitRoom() {
    while (this.room() < this._lowWater() && !this.closed) {
      await new Promise((resolve) => this._roomWaiters.push(resolve));
    }
    return this.room();
  }

  _lowWater() {
    return this._size === Infinity ? 1 : Math.max(1, Math.floor(this._size / 2));
  }

  _deliver(message) {
    this.emit("message", message);
    if (!this._callbacks) this._push(message);
  }

  _push(item) {
    this._items.push(item);
    this._wake();
  }

  _wake() {
    const wake = this._wakeUp;
    this._wakeUp = null;
    wake?.();
  }

  _wakeRoom() {
    const waiters = this._roomWaiters;
    this._roomWaiters = [];
    for (const resolve of waiters) resolve();
  }
}

/** A `message` as the client delivers it. */
export function decodePublication(publication) {
  return {
    channel: publication.channel,
    offset: publication.offset,
    epoch: publication.epoch,
    data: publication.data,
    publisher: publication.from ?? null,
  };
}
