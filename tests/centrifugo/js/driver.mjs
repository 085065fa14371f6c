// Drives Centrifugo's JavaScript SDK (the npm package `centrifuge`, unchanged) for the Python
// tests: commands as JSON lines on stdin, answers and SDK events as JSON lines on stdout.
//   node driver.mjs <url> [options as JSON]
// A command is {"id": n, "op": "...", ...}; its answer {"id": n, "result": ...} or
// {"id": n, "error": ...}. Events are {"event": "...", ...}.
import fs from 'node:fs';
import readline from 'node:readline';
import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';

const url = process.argv[2];
const options = JSON.parse(process.argv[3] || '{}');
const out = (value) => process.stdout.write(JSON.stringify(value) + '\n');

const client = new Centrifuge(url, { websocket: WebSocket, ...options });
for (const name of ['connecting', 'connected', 'disconnected', 'error']) {
  client.on(name, (ctx) => out({
    event: name,
    code: ctx.code,
    reason: ctx.reason,
    client: ctx.client,
    error: ctx.error,
  }));
}

// Server-side subscriptions (the connection token's `subs`) are the client's own events.
client.on('subscribed', (ctx) => out({
  event: 'server_subscribed',
  channel: ctx.channel,
  recoverable: ctx.recoverable,
  positioned: ctx.positioned,
  wasRecovering: ctx.wasRecovering,
  recovered: ctx.recovered,
  streamPosition: ctx.streamPosition,
}));
client.on('publication', (ctx) => out({
  event: 'server_publication', channel: ctx.channel, data: ctx.data, offset: ctx.offset,
}));
client.on('unsubscribed', (ctx) => out({ event: 'server_unsubscribed', channel: ctx.channel }));

// A subscription's getToken: the given tokens in turn, then one that never comes (so the SDK
// cannot refresh and the server must end the subscription). Each call is an event.
function tokenSource(channel, tokens) {
  return async () => {
    out({ event: 'sub_get_token', channel, left: tokens.length });
    if (tokens.length === 0) {
      return new Promise(() => {});
    }
    return tokens.shift();
  };
}

// A file whose appearance the next publication's handler waits for, busy (a stalled client:
// Node reads nothing from the socket meanwhile), at most 30 s; or null.
let blockNext = null;

function watch(sub) {
  sub.on('subscribed', (ctx) => out({
    event: 'subscribed',
    channel: ctx.channel,
    recoverable: ctx.recoverable,
    positioned: ctx.positioned,
    wasRecovering: ctx.wasRecovering,
    recovered: ctx.recovered,
    streamPosition: ctx.streamPosition,
  }));
  sub.on('publication', (ctx) => {
    out({ event: 'publication', channel: ctx.channel, data: ctx.data, offset: ctx.offset });
    if (blockNext !== null) {
      const until = Date.now() + 30000;
      const file = blockNext;
      blockNext = null;
      while (!fs.existsSync(file) && Date.now() < until) { /* stalled */ }
      out({ event: 'unblocked' });
    }
  });
  for (const name of ['join', 'leave']) {
    sub.on(name, (ctx) => out({ event: name, channel: ctx.channel, info: ctx.info }));
  }
  for (const name of ['subscribing', 'unsubscribed', 'error']) {
    sub.on(name, (ctx) => out({
      event: `sub_${name}`, channel: ctx.channel, code: ctx.code, reason: ctx.reason, error: ctx.error,
    }));
  }
}

async function run(command) {
  switch (command.op) {
    case 'connect':
      client.connect();
      await client.ready(5000);
      return {};
    case 'subscribe': {
      const subOptions = { ...(command.options || {}) };
      if (command.tokens) {
        subOptions.getToken = tokenSource(command.channel, command.tokens);
      }
      const sub = client.newSubscription(command.channel, subOptions);
      watch(sub);
      sub.subscribe();
      await sub.ready(5000);
      return {};
    }
    case 'publish':
      return await client.publish(command.channel, command.data);
    case 'presence':
      return await client.presence(command.channel);
    case 'presenceStats':
      return await client.presenceStats(command.channel);
    case 'history':
      return await client.history(command.channel, command.options || {});
    case 'block':
      blockNext = command.untilFile;
      return {};
    case 'disconnect':
      client.disconnect();
      return {};
    default:
      throw new Error(`unknown op ${command.op}`);
  }
}

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const command = JSON.parse(line);
  run(command).then(
    (result) => out({ id: command.id, result: result ?? {} }),
    (error) => out({ id: command.id, error: error?.error ?? error?.message ?? String(error) }),
  );
}).on('close', () => {
  client.disconnect();
  process.exit(0);
});
