// Opening one connection of the client: the WebSocket handshake up to `welcome`. The Client
// (client.js) serves the link it gives, and replaces it when it is lost. Also where the
// WebSocket class comes from, page-relative URLs, and the browser's network events.

import { ClientError } from "./errors.js";

/** The server answered the handshake with `disconnect` instead of `welcome` (1013). */
export class Refused extends Error {
  constructor(notice) {
    super(`refused: ${notice.code} ${notice.reason}`);
    this.notice = notice;
  }
}

/** The messages of a server frame: one message, or a batch (an array). */
export function decodeFrame(codec, data) {
  const decoded = codec.decode(data);
  if (Array.isArray(decoded)) return decoded;
  if (decoded === null || typeof decoded !== "object" || typeof decoded.type !== "string") {
    throw new Error("a frame that is not a message");
  }
  return [decoded];
}

/**
 * A new connection to `url` (the token already in it) that has read its `welcome`, as the link
 * the client serves: rejects with Refused on `disconnect`, or an Error.
 */
export function openLink(WebSocketClass, url, codec, number, openTimeout) {
  const ws = new WebSocketClass(url, [codec.subprotocol]);
  ws.binaryType = "arraybuffer";
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      give(new Error(`no welcome within ${openTimeout / 1000} s`));
    }, openTimeout);
    const give = (error) => {
      clearTimeout(timer);
      ws.onmessage = ws.onclose = null;
      try {
        ws.close();
      } catch {
        // not open yet
      }
      reject(error);
    };
    ws.onerror = () => {};
    ws.onclose = (event) => {
      give(new Error(`connection closed (${event.code}${event.reason ? " " + event.reason : ""})`));
    };
    ws.onmessage = (event) => {
      let messages;
      try {
        if (ws.protocol !== codec.subprotocol) {
          throw new Error(`the server chose subprotocol ${JSON.stringify(ws.protocol)}`);
        }
        messages = decodeFrame(codec, event.data);
      } catch (error) {
        give(error);
        return;
      }
      const first = messages[0];
      if (first && first.type === "disconnect") {
        give(new Refused(first));
        return;
      }
      if (!first || first.type !== "welcome") {
        give(new Error(`expected welcome, got ${JSON.stringify(first)}`));
        return;
      }
      clearTimeout(timer);
      const link = {
        ws,
        welcome: first,
        number,
        backlog: messages.slice(1),
        // Frames (and a close) that come before `_serve` takes the connection over: `ws`
        // may deliver the next frame in the same turn as `welcome`, before this promise's
        // continuation runs.
        early: [],
        closedEarly: null,
        ready: false,
        notice: null,
        broken: false,
        timers: [],
      };
      ws.onmessage = (event) => link.early.push(event.data);
      ws.onclose = (event) => {
        link.closedEarly = { code: event.code, reason: event.reason };
      };
      resolve(link);
    };
  });
}

export async function importWs() {
  try {
    return (await import("ws")).default;
  } catch (error) {
    throw new ClientError(
      `no WebSocket here: install the "ws" package, or pass a WebSocket class as the WebSocket option (${error.message})`,
    );
  }
}

export function resolveUrl(url) {
  if (url.startsWith("/") && typeof location !== "undefined" && location.host) {
    return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${url}`;
  }
  return url;
}

/** In a browser, call `check` on online/offline and when the page becomes visible. */
export function watchNetwork(check) {
  const target = globalThis.window;
  const doc = globalThis.document;
  if (!target || typeof target.addEventListener !== "function") return null;
  const onVisibility = () => {
    if (doc && doc.visibilityState === "visible") check();
  };
  target.addEventListener("online", check);
  target.addEventListener("offline", check);
  doc?.addEventListener("visibilitychange", onVisibility);
  return () => {
    target.removeEventListener("online", check);
    target.removeEventListener("offline", check);
    doc?.removeEventListener("visibilitychange", onVisibility);
  };
}
