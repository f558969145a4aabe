// A WebSocket backend of test_streams.py from another family than Python's `websockets`: Node's
// `ws` server (what most Node apps use, directly or under socket.io), echoing every message, text
// or binary, as it came. The Authorization each upgrade request brought is recorded, one JSON line
// per socket, in the file given as the first argument.
//
// Usage: node ws_echo_server.js <record-file>
// Listens on 127.0.0.1, an ephemeral port, and prints `LISTENING <port>` once it accepts. Exits
// when its stdin closes (the test holds the pipe), so it never outlives the test.
'use strict';

const fs = require('fs');
const path = require('path');

// Resolve the packages from tests/interop/node_modules whatever the cwd.
const { WebSocketServer } = require(path.join(__dirname, '..', 'node_modules', 'ws'));

const recordFile = process.argv[2];
if (!recordFile) {
  console.error('usage: ws_echo_server.js <record-file>');
  process.exit(2);
}

const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
wss.on('connection', (ws, req) => {
  fs.appendFileSync(recordFile, JSON.stringify({ authorization: req.headers.authorization || null }) + '\n');
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on('error', () => {});
});
wss.on('listening', () => console.log(`LISTENING ${wss.address().port}`));

process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
