// The backend of test_method_override.py: a real Express app with the `method-override`
// middleware, set up as its README shows, once for each header a client may use and once for the
// `_method` query parameter (the query getter). Whatever method Express finally routes a request
// as is recorded, one JSON line per request, in the file given as the first argument, and echoed
// in the answer.
//
// Usage: node method_override_server.js <record-file>
// Listens on 127.0.0.1, an ephemeral port, and prints `LISTENING <port>` once it accepts. Exits
// when its stdin closes (the test holds the pipe), so it never outlives the test.
'use strict';

const fs = require('fs');
const path = require('path');

// Resolve the packages from tests/interop/node_modules whatever the cwd.
const modules = path.join(__dirname, '..', 'node_modules');
const express = require(path.join(modules, 'express'));
const methodOverride = require(path.join(modules, 'method-override'));

const recordFile = process.argv[2];
if (!recordFile) {
  console.error('usage: method_override_server.js <record-file>');
  process.exit(2);
}

const app = express();
app.disable('x-powered-by');
app.use(methodOverride('X-HTTP-Method-Override'));
app.use(methodOverride('X-HTTP-Method'));
app.use(methodOverride('X-Method-Override'));
app.use(methodOverride('_method'));

// One handler per method, so the record says which route Express dispatched to (not only what
// req.method says).
const METHODS = ['get', 'post', 'put', 'patch', 'delete', 'options', 'purge', 'propfind'];
for (const m of METHODS) {
  app[m]('*', (req, res) => answer(req, res, m.toUpperCase()));
}
app.use((req, res) => answer(req, res, null));

function answer(req, res, routed) {
  const rec = {
    case: req.get('x-probe-case') || null,
    routed,
    method: req.method,
    originalMethod: req.originalMethod,
    url: req.originalUrl,
    authorization: req.get('authorization') || null,
  };
  fs.appendFileSync(recordFile, JSON.stringify(rec) + '\n');
  res.status(routed ? 200 : 404).json({ expressProbe: true, ...rec });
}

const server = app.listen(0, '127.0.0.1', () => {
  process.stdout.write(`LISTENING ${server.address().port}\n`);
});
server.keepAliveTimeout = 1000;
process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
process.stdin.resume();
process.on('SIGTERM', () => process.exit(0));
