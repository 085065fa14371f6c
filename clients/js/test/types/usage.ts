// Compiled (not run) by test/types.test.js: the declarations describe the client as it is used.
import {
  connect,
  RequestError,
  ResyncNeeded,
  type Message,
  type ServerMessage,
  type Subscribed,
} from "broker-client";

async function main(): Promise<void> {
  const client = await connect("ws://127.0.0.1:8000/v1/ws", {
    encoding: "msgpack",
    token: async () => "a token",
    backoff: { base: 50, cap: 5000 },
  });
  const sub = await client.subscribe<{ text: string }>("chat:lobby", { joinsAndLeaves: true });
  const reply = await client.publish("chat:lobby", { text: "hi" });
  const offset: number = reply.offset;
  try {
    for await (const item of sub) {
      if ("offset" in item) {
        const text: string = item.data.text;
        void text;
      } else {
        const kind: "join" | "leave" = item.kind;
        void kind;
      }
    }
  } catch (error) {
    if (error instanceof ResyncNeeded) void error.epoch;
    if (error instanceof RequestError) void error.code;
  }
  await client.subscribe("chat:other", (message: Message) => void message.publisher);
  client.on("resync", (resync) => void resync.offset);
  client.on("connected", ({ welcome }) => void welcome.heartbeat);
  client.on("connected", ({ welcome }) => void welcome.subs.length);
  client.on("subscribed", ({ channel, subscription, offset }) => {
    const serverSide: boolean = subscription.serverSide;
    subscription.on("message", (message) => void [channel, offset, serverSide, message.data]);
  });
  const page = await client.history("chat:lobby", { since: { offset, epoch: reply.epoch }, limit: 10 });
  void page.publications.length;
  const members = await client.presence("chat:lobby");
  void members.map((m) => m.client);
  const pick = (frame: ServerMessage): Subscribed | undefined =>
    frame.type === "subscribed" ? frame : undefined;
  void pick({ type: "pong", id: 1 });
  client.close();
}

void main;
