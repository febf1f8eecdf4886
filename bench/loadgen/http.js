// HTTP for the load generators: one request on a keep-alive agent, answered with
// {status, body} (the body as text).
'use strict';

const http = require('http');

// A keep-alive socket the server closed as idle (uvicorn: after 5 s) can be handed to a new
// request just as the close arrives: that request never reached the server, so it is sent
// once more (Node's documented remedy, ClientRequest.reusedSocket), and counted here.
const counters = { staleRetries: 0 };

function request(to, method, path, token, body, retried = false) {
  // to: {agent, host, port, timeoutMs}
  return new Promise((resolve, reject) => {
    const data = body === undefined ? null : Buffer.from(JSON.stringify(body));
    const headers = {};
    if (data) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = data.length;
    }
    if (token) headers.authorization = `Bearer ${token}`;
    const req = http.request({ host: to.host, port: to.port, method, path, agent: to.agent, headers }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString() }));
      res.on('error', reject);
    });
    req.on('error', (e) => {
      if (!retried && req.reusedSocket && (e.code === 'ECONNRESET' || e.code === 'EPIPE')) {
        counters.staleRetries++;
        request(to, method, path, token, body, true).then(resolve, reject);
      } else reject(e);
    });
    req.setTimeout(to.timeoutMs || 60000, () => req.destroy(new Error('HTTP timeout')));
    req.end(data);
  });
}

module.exports = { request, counters };
