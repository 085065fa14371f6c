// The tutorial's /ws/chat on Node.js `ws`: every text frame goes to every client as
// "Client says: <text>"; when a client leaves, the others get "A client has left the chat.".
// A benchmark peer, as plain as the tutorial: no queues, no slow-consumer handling.
//
// Usage: node server.js --port P [--host 127.0.0.1]
'use strict';

const http = require('http');
const { WebSocketServer, WebSocket } = require('ws');

function option(name, fallback) {
  const index = process.argv.indexOf(name);
  return index >= 0 && index + 1 < process.argv.length ? process.argv[index + 1] : fallback;
}

const host = option('--host', '127.0.0.1');
const port = Number(option('--port', '8000'));

const server = http.createServer((request, response) => {
  response.writeHead(404);
  response.end();
});
// Same settings as the broker: no compression, no extra buffering; ws's default max payload.
const wss = new WebSocketServer({ server, path: '/ws/chat', perMessageDeflate: false });

function broadcast(text) {
  for (const client of wss.clients) {
    if (client.readyState === WebSocket.OPEN) {
      client.send(text);
    }
  }
}

wss.on('connection', (socket) => {
  socket.on('message', (data, isBinary) => {
    if (!isBinary) {
      broadcast('Client says: ' + data.toString());
    }
  });
  socket.on('close', () => broadcast('A client has left the chat.'));
  socket.on('error', () => {});
});

server.listen({ host, port, backlog: 4096 });

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
