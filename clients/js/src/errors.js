// What the client throws. Every error is a ClientError:
//
//   ClientError
//   ├── RequestError      the server answered a request with `error` (`code`, `message`); the
//   │                     connection stays open
//   ├── RequestTimeout    no reply within the request timeout
//   ├── ConnectionLost    the connection dropped while the request was in flight: it may or may
//   │                     not have taken effect. The client reconnects by itself.
//   ├── ResyncNeeded      recovery of a channel failed; the subscription goes on from
//   │                     (epoch, offset)
//   └── ClientClosed      the client is closed for good; every later call throws it
//       ├── ConnectFailed could not (re)connect
//       └── Disconnected  the server said not to come back (`reconnect: false`, or a close
//                         code a retry cannot fix)

/** Base of every error the client throws. */
export class ClientError extends Error {
  constructor(message) {
    super(message);
    this.name = new.target.name;
  }
}

/** An `error` reply: `code` is one of the protocol's error codes (`bad_request`, ...). */
export class RequestError extends ClientError {
  /** @param {string} code @param {string} message */
  constructor(code, message) {
    super(`${code}: ${message}`);
    /** @type {string} */
    this.code = code;
    /** @type {string} */
    this.detail = message;
  }
}

/** No reply came within the request timeout. */
export class RequestTimeout extends ClientError {}

/** The connection dropped before the reply came; the request may or may not have been done. */
export class ConnectionLost extends ClientError {}

/**
 * Recovery of `channel` failed: publications were missed and cannot be fetched. The
 * subscription is still alive; what it delivers next comes after `offset` of stream `epoch`.
 */
export class ResyncNeeded extends ClientError {
  /** @param {string} channel @param {string} epoch @param {number} offset */
  constructor(channel, epoch, offset) {
    super(
      `resync needed on ${JSON.stringify(channel)}: publications were missed; ` +
        `delivery goes on after offset ${offset} of epoch ${JSON.stringify(epoch)}`,
    );
    this.channel = channel;
    this.epoch = epoch;
    this.offset = offset;
  }
}

/** The client is closed: by its owner, or because it gave up (see the subclasses). */
export class ClientClosed extends ClientError {}

/** The client could not connect; `cause` holds the last error. */
export class ConnectFailed extends ClientClosed {
  constructor(message, options) {
    super(message);
    if (options && "cause" in options) this.cause = options.cause;
  }
}

/** The server ended the session and told the client not to reconnect. */
export class Disconnected extends ClientClosed {
  /** @param {number} code @param {string} reason */
  constructor(code, reason) {
    super(`disconnected by the server: ${code} ${reason}`.trimEnd());
    this.code = code;
    this.reason = reason;
  }
}
