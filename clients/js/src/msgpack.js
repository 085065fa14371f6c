// MessagePack for the client, loaded only when a client asks for `encoding: "msgpack"`.
// In Node.js and bundlers this is the @msgpack/msgpack package (an optional peer dependency);
// the broker serves its own /v1/msgpack.js with the same two exports for pages.
export { decode, encode } from "@msgpack/msgpack";
