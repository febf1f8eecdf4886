// Ceiling: a Node ``ws`` server (no Redis, no storage). POST /publish/{channel}, WS /ws/{channel}.
// Run: node bench/peers/ws_node.js PORT   (needs bench/loadgen/node_modules)
'use strict';
const http = require('http');
const path = require('path');
const WebSocket = require(path.join(__dirname, '..', 'loadgen', 'node_modules', 'ws'));

const channels = new Map();
const server = http.createServer((req, res) => {
  if (req.method !== 'POST' || !req.url.startsWith('/publish/')) { res.writeHead(404); res.end(); return; }
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const body = JSON.parse(Buffer.concat(chunks).toString());
    const msgs = body.events || [body];
    const subs = channels.get(decodeURIComponent(req.url.slice(9))) || new Set();
    for (const m of msgs) {
      const data = JSON.stringify(m);
      for (const ws of subs) ws.send(data);
    }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ published: msgs.length }));
  });
});
const wss = new WebSocket.Server({ server, perMessageDeflate: false });
wss.on('connection', (ws, req) => {
  const ch = decodeURIComponent(req.url.slice(4));
  if (!channels.has(ch)) channels.set(ch, new Set());
  channels.get(ch).add(ws);
  ws.on('close', () => channels.get(ch).delete(ws));
});
server.listen(Number(process.argv[2]), '127.0.0.1');
