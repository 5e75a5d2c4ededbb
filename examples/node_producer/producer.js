#!/usr/bin/env node
// A reference vaultq producer in Node.js, written from docs/envelope.md and docs/redis.md
// alone: seals a job (envelope.js), enqueues it into Redis with a tiny RESP client and
// waits for the worker's sealed result. Built-in modules only (crypto, net, fs). An
// example, not a product: plain-TCP Redis without a password, jobs due now only.
//
//   node producer.js --redis redis://127.0.0.1:6379/0 --keys keyring.json --app shop \
//        --task specapp.refund --payload '{"order_id":7}' --principal '{"id":"user:42"}'
//        [--envelope-version 1|2]
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const net = require('net');
const { loadKeyring, sealJob, openResult, streamFieldsOk } = require('./envelope');

// --- a tiny RESP client (docs/redis.md: wire layout) -------------------------------
function redisCommand(url, args) {
  const u = new URL(url);
  const db = (u.pathname || '/0').slice(1) || '0';
  const cmds = [['SELECT', db], args];
  const wire = Buffer.concat(cmds.map((c) => Buffer.concat([Buffer.from(`*${c.length}\r\n`),
    ...c.map((a) => { const b = Buffer.isBuffer(a) ? a : Buffer.from(String(a)); return Buffer.concat([Buffer.from(`$${b.length}\r\n`), b, Buffer.from('\r\n')]); })]))); 
  return new Promise((resolve, reject) => {
    const sock = net.connect(Number(u.port || 6379), u.hostname);
    let buf = Buffer.alloc(0);
    const replies = [];
    function parse(o) { // returns [value, next] or null when incomplete
      const eol = buf.indexOf('\r\n', o);
      if (eol < 0) return null;
      const t = String.fromCharCode(buf[o]); const line = buf.toString('utf8', o + 1, eol);
      if (t === '+') return [line, eol + 2];
      if (t === '-') return [new Error(line), eol + 2];
      if (t === ':') return [Number(line), eol + 2];
      if (t === '$') { const n = Number(line); if (n < 0) return [null, eol + 2]; if (buf.length < eol + 4 + n) return null; return [buf.subarray(eol + 2, eol + 2 + n), eol + 4 + n]; }
      if (t === '*') { const n = Number(line); if (n < 0) return [null, eol + 2]; const out = []; let p = eol + 2; for (let i = 0; i < n; i++) { const r = parse(p); if (!r) return null; out.push(r[0]); p = r[1]; } return [out, p]; }
      throw new Error('bad RESP reply');
    }
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      let r;
      while ((r = parse(0))) { replies.push(r[0]); buf = buf.subarray(r[1]); }
      if (replies.length === cmds.length) {
        sock.end();
        const err = replies.find((x) => x instanceof Error);
        if (err) reject(err); else resolve(replies[1]);
      }
    });
    sock.on('error', reject);
    sock.write(wire);
  });
}

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0 && fallback === undefined) throw new Error(`--${name} is required`);
  return i < 0 ? fallback : process.argv[i + 1];
}
async function produce() {
  const kr = loadKeyring(fs.readFileSync(arg('keys'), 'utf8'));
  if (!kr.sign) throw new Error('this keyring cannot sign: producers need the signing key');
  const now = Date.now();
  const job = {
    job_id: Buffer.concat([Buffer.from(now.toString(16).padStart(12, '0'), 'hex'), crypto.randomBytes(10)]).toString('hex'),
    app: arg('app'), task: arg('task'), queue: arg('queue', 'default'), payload: arg('payload'),
    principal: JSON.parse(arg('principal', 'null')), meta: {},
    issued_at_ms: now, not_before_ms: now, expires_at_ms: now + 3600 * 1000,
  };
  const prefix = `vaultq:{${arg('namespace', job.app)}:${job.queue}}:`;
  const redis = arg('redis');
  const at = (now / 1000).toFixed(6); // decimal seconds, never an exponent for real clocks
  if (!streamFieldsOk('1', at)) throw new Error(`clock gives an enqueue time outside docs/redis.md's form: ${at}`);
  await redisCommand(redis, ['XADD', `${prefix}stream`, '*', 'id', job.job_id, 'env', sealJob(kr, job, crypto.randomBytes(arg('envelope-version', '2') === '1' ? 12 : 24)), 'att', '1', 'at', at]);
  const key = `${prefix}result:${job.job_id}`;
  const deadline = Date.now() + Number(arg('timeout', '15')) * 1000;
  while (Date.now() < deadline) {
    const raw = await redisCommand(redis, ['BLMOVE', key, key, 'LEFT', 'LEFT', '1']);
    if (raw) {
      console.log(JSON.stringify({ job_id: job.job_id, result_version: raw[2], result: openResult(kr, raw, job) }));
      return;
    }
  }
  throw new Error(`no result for job ${job.job_id} in time`);
}

Promise.resolve().then(produce)
  .catch((e) => { console.error(`producer: ${e.message}`); process.exit(1); });
