// Types of the broker's JavaScript client (client.js). The wire messages are in protocol.d.ts,
// generated from the broker's msgspec types.

import type { ClientInfo, StreamPosition, Welcome } from "./protocol.js";

export type * from "./protocol.js";

export type Encoding = "json" | "msgpack";

/** A token, or a function that returns one (called on every connection and before expiry). */
export type TokenSource = string | null | (() => string | Promise<string>);

export interface BackoffOptions {
  /** Upper bound of the first reconnection delay, ms (default 100). */
  base?: number;
  /** Largest delay, ms (default 10000). */
  cap?: number;
  /** Growth per attempt (default 2). */
  factor?: number;
  random?: () => number;
}

export class Backoff {
  constructor(options?: BackoffOptions);
  readonly base: number;
  readonly cap: number;
  readonly factor: number;
  ceiling(attempt: number): number;
  delay(attempt: number): number;
}

export interface ConnectOptions {
  /** Wire encoding (default "json"); "msgpack" loads MessagePack on first use. */
  encoding?: Encoding;
  /** Sent as the `token` query parameter of the WebSocket URL. */
  token?: TokenSource;
  /** Bound of each request, waiting for a connection included, ms (default 10000). */
  requestTimeout?: number;
  /** Bound of a connection's opening up to `welcome`, ms (default 10000). */
  openTimeout?: number;
  /** Default bound of an iterated subscription's queue (default 1000). */
  queueSize?: number;
  backoff?: Backoff | BackoffOptions;
  /** Failed reconnection attempts in a row before giving up (null: never give up; 0: never reconnect). */
  maxAttempts?: number | null;
  /** How long a `publish` is retried with its idempotency key after unavailable/lost/timeout, ms (default 30000). */
  publishRetryFor?: number;
  /** Refresh a provider's token at most this long before it expires, ms (default 30000). */
  refreshMargin?: number;
  /** A MessagePack module (`encode`, `decode`), instead of importing ./msgpack.js. */
  msgpack?: { encode(value: unknown): Uint8Array; decode(data: Uint8Array): unknown };
  /** The WebSocket class (default: globalThis.WebSocket, else the `ws` package). */
  WebSocket?: unknown;
  /** In a browser, check the connection on online/offline/visibility events (default true). */
  watchNetwork?: boolean;
}

/** One publication, `data` decoded. */
export interface Message<T = unknown> {
  channel: string;
  /** Its place in the channel: 1, 2, 3, ... within `epoch`. */
  offset: number;
  epoch: string;
  data: T;
  /** The publisher's client id (wire field `from`); null when published over HTTP. */
  publisher: string | null;
}

/** A `join` or `leave` of another client. */
export interface PresenceChange {
  kind: "join" | "leave";
  channel: string;
  client: string;
  user: string | null;
}

export interface GapNotice {
  channel: string;
  fromOffset: number;
  toOffset: number;
}

export interface PublishResult {
  channel: string;
  offset: number;
  epoch: string;
}

export interface HistoryPage<T = unknown> {
  channel: string;
  epoch: string;
  offset: number;
  publications: Message<T>[];
}

export interface SubscribeOptions<T = unknown> {
  /** Deliver what came after this position first (or a resync when it cannot be). */
  since?: StreamPosition | null;
  /** Bound of the iteration queue (default: the client's queueSize). */
  queueSize?: number;
  /** Also yield PresenceChange items when iterating. */
  joinsAndLeaves?: boolean;
  /** Deliver by callback instead of async iteration. */
  onMessage?: (message: Message<T>) => void;
  onJoin?: (change: PresenceChange) => void;
  onLeave?: (change: PresenceChange) => void;
  onResync?: (resync: ResyncNeeded) => void;
  onGap?: (gap: GapNotice) => void;
  onError?: (error: ClientError) => void;
}

interface Events<M> {
  on<K extends keyof M>(event: K, listener: (value: M[K]) => void): () => void;
  once<K extends keyof M>(event: K, listener: (value: M[K]) => void): () => void;
  off<K extends keyof M>(event: K, listener: (value: M[K]) => void): void;
}

export interface SubscriptionEvents<T> {
  message: Message<T>;
  join: PresenceChange;
  leave: PresenceChange;
  resync: ResyncNeeded;
  gap: GapNotice;
  error: ClientError;
  closed: ClientError | null;
}

export interface Subscription<T = unknown> extends Events<SubscriptionEvents<T>> {}
export class Subscription<T = unknown> implements AsyncIterable<Message<T> | PresenceChange> {
  readonly channel: string;
  /** Made by the server (the token's `subs`, an operator's subscribe), not by `subscribe()`. */
  readonly serverSide: boolean;
  /** The last delivered position (pass it as `since` later); null before `subscribed`. */
  readonly position: StreamPosition | null;
  readonly closed: boolean;
  /** Items waiting for the iterating consumer. */
  readonly queued: number;
  readonly counts: {
    live: number;
    recovered: number;
    fetched: number;
    skipped: number;
    resyncs: number;
  };
  unsubscribe(): Promise<void>;
  /** Throws ResyncNeeded once where recovery failed; iterate again to go on. */
  [Symbol.asyncIterator](): AsyncIterator<Message<T> | PresenceChange>;
}

export interface ClientEvents {
  connected: { client: string; connection: number; welcome: Welcome };
  /** `retryAfter`: the server's `retry_after`, ms. */
  disconnected: { code: number; reason: string; reconnect: boolean; retryAfter: number };
  reconnecting: { attempt: number; delay: number };
  closed: ClientClosed | null;
  resync: ResyncNeeded;
  gap: GapNotice;
  error: ClientError;
  /**
   * The server subscribed this connection to a channel itself (the token's `subs`, an
   * operator's subscribe): once per subscription, before any of its messages. It delivers by
   * `message` event until iterated; listen or start iterating in this listener.
   */
  subscribed: { channel: string; subscription: Subscription; offset: number; epoch: string };
  /** The server ended a subscription (an operator unsubscribed this user). */
  unsubscribed: { channel: string };
}

export interface Client extends Events<ClientEvents> {}
export class Client {
  constructor(url?: string, options?: ConnectOptions);
  readonly url: string;
  readonly encoding: Encoding;
  readonly connected: boolean;
  readonly connections: number;
  readonly welcome: Welcome | null;
  readonly clientId: string | null;
  readonly subscriptions: Map<string, Subscription>;
  readonly failure: ClientClosed | null;
  open(): Promise<void>;
  /** Resolves with the client id of the first ready connection numbered above `after`. */
  waitConnected(after?: number): Promise<string>;
  close(): void;
  check(timeout?: number): void;
  subscribe<T = unknown>(
    channel: string,
    options?: SubscribeOptions<T> | ((message: Message<T>) => void),
  ): Promise<Subscription<T>>;
  unsubscribe(channel: string): Promise<void>;
  publish(
    channel: string,
    data: unknown,
    options?: { wait?: true; idempotencyKey?: string },
  ): Promise<PublishResult>;
  publish(
    channel: string,
    data: unknown,
    options: { wait: false; idempotencyKey?: string },
  ): Promise<null>;
  history<T = unknown>(
    channel: string,
    options?: { since?: StreamPosition | null; limit?: number | null },
  ): Promise<HistoryPage<T>>;
  presence(channel: string): Promise<ClientInfo[]>;
  /** Round-trip time of a `ping`, ms. */
  ping(): Promise<number>;
}

export const DEFAULT_URL: string;
export const FINAL_CLOSE_CODES: ReadonlySet<number>;

export function connect(url?: string, options?: ConnectOptions): Promise<Client>;

export class ClientError extends Error {}
export class RequestError extends ClientError {
  readonly code: string;
  readonly detail: string;
}
export class RequestTimeout extends ClientError {}
export class ConnectionLost extends ClientError {}
export class ResyncNeeded extends ClientError {
  readonly channel: string;
  readonly epoch: string;
  readonly offset: number;
}
export class ClientClosed extends ClientError {}
export class ConnectFailed extends ClientClosed {}
export class Disconnected extends ClientClosed {
  readonly code: number;
  readonly reason: string;
}
