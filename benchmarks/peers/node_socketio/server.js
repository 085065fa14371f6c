// Channels on socket.io 4, the way its documentation does them: one room per channel.
// A client emits "subscribe" (channel, ack) to join a room and "publish" (channel, data) to send
// data to everyone in that room, who get the event "message" (data). WebSocket transport only,
// no compression (as the broker), socket.io's default settings otherwise.
//
// Usage: node server.js --port P [--host 127.0.0.1]
'use strict';

const http = require('http');
const { Server } = require('socket.io');

function option(name, fallback) {
  const index = process.argv.indexOf(name);
  return index >= 0 && index + 1 < process.argv.length ? process.argv[index + 1] : fallback;
}

const host = option('--host', '127.0.0.1');
const port = Number(option('--port', '8000'));

const server = http.createServer();
const io = new Server(server, {
  transports: ['websocket'],
  serveClient: false,
  perMessageDeflate: false,
  maxHttpBufferSize: 1e6,
});

io.on('connection', (socket) => {
  socket.on('subscribe', (channel, ack) => {
    socket.join(String(channel));
    if (typeof ack === 'function') {
      ack(true);
    }
  });
  socket.on('publish', (channel, data) => {
    io.to(String(channel)).emit('message', data);
  });
  socket.on('error', () => {});
});

server.listen({ host, port, backlog: 4096 });

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
