// The wire encodings: JSON in text frames, MessagePack in binary frames.

/** @typedef {{name: "json"|"msgpack", subprotocol: string, binary: boolean,
 *   encode(message: object): string|Uint8Array, decode(data: string|ArrayBuffer|Uint8Array): any}} Codec */

const textDecoder = new TextDecoder();

/** @type {Codec} */
export const JSON_CODEC = {
  name: "json",
  subprotocol: "broker.v1.json",
  binary: false,
  encode: (message) => JSON.stringify(message),
  decode: (data) => JSON.parse(typeof data === "string" ? data : textDecoder.decode(data)),
};

/**
 * The codec for `encoding`. MessagePack is imported on first use: from `msgpack` when given
 * (any module with `encode` and `decode`, such as `@msgpack/msgpack`), else from ./msgpack.js.
 * @param {"json"|"msgpack"} encoding
 * @param {{encode: Function, decode: Function}} [msgpack]
 * @returns {Promise<Codec>}
 */
export async function codecFor(encoding, msgpack) {
  if (encoding === "json") return JSON_CODEC;
  if (encoding !== "msgpack") {
    throw new TypeError(`encoding must be "json" or "msgpack", not ${JSON.stringify(encoding)}`);
  }
  const lib = msgpack ?? (await import("./msgpack.js"));
  return {
    name: "msgpack",
    subprotocol: "broker.v1.msgpack",
    binary: true,
    encode: (message) => lib.encode(message),
    decode: (data) => lib.decode(data instanceof ArrayBuffer ? new Uint8Array(data) : data),
  };
}
