#!/usr/bin/env node
// A reference vaultq producer in Node.js, written from docs/envelope.md and docs/redis.md
// alone. Built-in modules only (crypto, net, fs): a minimal msgpack subset, XAES-256-GCM
// from AES-256 blocks, a tiny RESP client. An example, not a product: v2 envelopes,
// hmac-sha256 or ed25519 signing, plain-TCP Redis without a password.
//
//   node producer.js --redis redis://127.0.0.1:6379/0 --keys keyring.json --app shop \
//        --task specapp.refund --payload '{"order_id":7}' --principal '{"id":"user:42"}'
//   node producer.js --vectors tests/vectors/envelope_v2.json
//   node producer.js --refusals tests/vectors/envelope_v2_refusals.json
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const net = require('net');

const JOB_DOMAIN = Buffer.from('vaultq/v1/job\0');
const RESULT_DOMAIN = Buffer.from('vaultq/v1/result\0');
const MAGIC_V2 = Buffer.from([0x56, 0x51, 0x02]);

// --- msgpack: shortest forms only (the spec refuses anything else) --------------------
function mpInt(n) {
  if (!Number.isSafeInteger(n) || n < 0) throw new Error('header integers must be 0..2^53-1');
  if (n < 0x80) return Buffer.from([n]);
  if (n < 0x100) return Buffer.from([0xcc, n]);
  if (n < 0x10000) { const b = Buffer.alloc(3); b[0] = 0xcd; b.writeUInt16BE(n, 1); return b; }
  if (n < 0x100000000) { const b = Buffer.alloc(5); b[0] = 0xce; b.writeUInt32BE(n, 1); return b; }
  const b = Buffer.alloc(9); b[0] = 0xcf; b.writeBigUInt64BE(BigInt(n), 1); return b;
}
function lenPrefix(n, tiny, codes) { // tiny: fixstr base or null; codes: 8/16/32-bit markers
  if (tiny !== null && n < 32) return Buffer.from([tiny | n]);
  if (n < 0x100) return Buffer.from([codes[0], n]);
  if (n < 0x10000) { const b = Buffer.alloc(3); b[0] = codes[1]; b.writeUInt16BE(n, 1); return b; }
  const b = Buffer.alloc(5); b[0] = codes[2]; b.writeUInt32BE(n, 1); return b;
}
const mpStr = (s) => { const u = Buffer.from(s, 'utf8'); return Buffer.concat([lenPrefix(u.length, 0xa0, [0xd9, 0xda, 0xdb]), u]); };
const mpBin = (u) => Buffer.concat([lenPrefix(u.length, null, [0xc4, 0xc5, 0xc6]), u]);
const mpArray = (items) => Buffer.concat([Buffer.from([0x90 | items.length]), ...items]); // <= 15

function mpDecode(buf) { // the subset envelopes use; returns [value, next offset]
  let o = 0;
  function read() {
    const t = buf[o++];
    const u = (w) => { const v = w === 8 ? Number(buf.readBigUInt64BE(o)) : buf.readUIntBE(o, w); o += w; return v; };
    const bytes = (n) => { const v = buf.subarray(o, o + n); o += n; if (v.length !== n) throw new Error('truncated'); return v; };
    if (t < 0x80) return t;
    if ((t & 0xf0) === 0x90) return Array.from({ length: t & 0x0f }, read);
    if ((t & 0xe0) === 0xa0) return bytes(t & 0x1f).toString('utf8');
    switch (t) {
      case 0xcc: return u(1); case 0xcd: return u(2); case 0xce: return u(4); case 0xcf: return u(8);
      case 0xd9: return bytes(u(1)).toString('utf8'); case 0xda: return bytes(u(2)).toString('utf8');
      case 0xdb: return bytes(u(4)).toString('utf8');
      case 0xc4: return Buffer.from(bytes(u(1))); case 0xc5: return Buffer.from(bytes(u(2)));
      case 0xc6: return Buffer.from(bytes(u(4)));
      default: throw new Error(`msgpack type 0x${t.toString(16)} is not used by envelopes`);
    }
  }
  const value = read();
  if (o !== buf.length) throw new Error('trailing bytes');
  return value;
}

// --- keyring (docs/keys.md) --------------------------------------------------------
const b64 = (s) => Buffer.from(s, 'base64url');
function ed25519Private(seed) {
  const der = Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), seed]);
  return crypto.createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
}
function ed25519Public(raw) {
  return crypto.createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: raw.toString('base64url') }, format: 'jwk' });
}
function loadKeyring(doc) {
  const enc = {};
  for (const [id, k] of Object.entries(doc.encryption.keys)) enc[id] = b64(k);
  const verifiers = {}; // signer id -> (data, sig) => bool
  let sign = null;
  const signing = doc.signing || { keys: {} };
  for (const [id, e] of Object.entries(signing.keys || {})) {
    const raw = b64(e.key);
    if (e.alg === 'hmac-sha256') {
      const mac = (d) => crypto.createHmac('sha256', raw).update(d).digest();
      verifiers[id] = (d, s) => s.length === 32 && crypto.timingSafeEqual(mac(d), s);
      if (id === signing.active) sign = mac;
    } else if (e.alg === 'ed25519') {
      const priv = ed25519Private(raw);
      const pub = crypto.createPublicKey(priv);
      verifiers[id] = (d, s) => s.length === 64 && crypto.verify(null, d, pub, s);
      if (id === signing.active) sign = (d) => crypto.sign(null, d, priv);
    } else throw new Error(`unknown signing algorithm for ${id}`);
  }
  for (const [id, e] of Object.entries(doc.verify || {})) {
    if (e.alg !== 'ed25519') throw new Error(`verify-only key ${id} must be ed25519`);
    const pub = ed25519Public(b64(e.key));
    verifiers[id] = (d, s) => s.length === 64 && crypto.verify(null, d, pub, s);
  }
  const revoked = new Set(doc.revoked || []);
  return { enc, active: doc.encryption.active, signerId: sign ? signing.active : null, sign, verifiers, revoked };
}

// --- XAES-256-GCM (C2SP) -----------------------------------------------------------
function aesBlock(key, block) {
  const c = crypto.createCipheriv('aes-256-ecb', key, null);
  c.setAutoPadding(false);
  return Buffer.concat([c.update(block), c.final()]);
}
function xaesKey(key, nonce) {
  const L = aesBlock(key, Buffer.alloc(16));
  const K1 = Buffer.alloc(16);
  for (let i = 0; i < 16; i++) K1[i] = ((L[i] << 1) | (i < 15 ? L[i + 1] >> 7 : 0)) & 0xff;
  if (L[0] & 0x80) K1[15] ^= 0x87;
  const M = (c) => Buffer.concat([Buffer.from([0x00, c, 0x58, 0x00]), nonce.subarray(0, 12)]).map((b, i) => b ^ K1[i]);
  return Buffer.concat([aesBlock(key, M(1)), aesBlock(key, M(2))]);
}
function xaesSeal(key, nonce, plaintext, aad) {
  const c = crypto.createCipheriv('aes-256-gcm', xaesKey(key, nonce), nonce.subarray(12));
  c.setAAD(aad);
  return Buffer.concat([c.update(plaintext), c.final(), c.getAuthTag()]);
}
function xaesOpen(key, nonce, ciphertext, aad) {
  const d = crypto.createDecipheriv('aes-256-gcm', xaesKey(key, nonce), nonce.subarray(12));
  d.setAAD(aad);
  d.setAuthTag(ciphertext.subarray(ciphertext.length - 16));
  return Buffer.concat([d.update(ciphertext.subarray(0, ciphertext.length - 16)), d.final()]);
}

// --- envelopes (docs/envelope.md) --------------------------------------------------
function jobPlaintext(payload, principal, meta) {
  // Field order as vaultq writes it (only needed to reproduce the vectors byte for byte).
  const p = principal && {
    id: principal.id, roles: [...(principal.roles || [])].sort(),
    permissions: [...(principal.permissions || [])].sort(), attrs: principal.attrs || {},
  };
  const m = {};
  for (const k of ['parent_id', 'trace', 'timeout']) if (meta && meta[k] != null) m[k] = meta[k];
  return Buffer.from(`{"payload":${payload},"principal":${JSON.stringify(p || null)},"meta":${JSON.stringify(m)}}`);
}
function sealJob(kr, job, nonce = crypto.randomBytes(24)) {
  const header = mpArray([mpInt(2), mpStr(job.job_id), mpStr(job.app), mpStr(job.task), mpStr(job.queue),
    mpInt(job.issued_at_ms), mpInt(job.not_before_ms), mpInt(job.expires_at_ms), mpStr(kr.active), mpStr(kr.signerId)]);
  const ct = xaesSeal(kr.enc[kr.active], nonce, jobPlaintext(job.payload, job.principal, job.meta), header);
  const sig = kr.sign(Buffer.concat([JOB_DOMAIN, header, nonce, ct]));
  return Buffer.concat([MAGIC_V2, mpArray([mpBin(header), mpBin(nonce), mpBin(ct), mpBin(sig)])]);
}
// Opens a v2 envelope in the spec's check order; `domain` picks job or result rules.
// `want`: app, job_id, queue, and task (results) or tasks + now_ms + skew_s (jobs).
// Throws an Error whose message is the spec's reason code. Returns {header, plaintext}.
function openEnvelope(kr, data, domain, want) {
  if (data.length > (want.max_size || 1048576)) throw new Error('too_large');
  if (!data.subarray(0, 3).equals(MAGIC_V2)) throw new Error('unsupported_version');
  let box, hb, h;
  try {
    box = mpDecode(data.subarray(3));
    if (!Array.isArray(box) || box.length !== 4 || !box.every(Buffer.isBuffer)) throw new Error();
    hb = box[0];
    h = mpDecode(hb);
    const types = ['number', 'string', 'string', 'string', 'string', 'number', 'number', 'number', 'string', 'string'];
    if (!Array.isArray(h) || h.length !== 10 || h.some((x, i) => typeof x !== types[i])) throw new Error();
    // Canonical framing: re-encode and compare (the spec refuses every longer form).
    const again = mpArray([mpInt(h[0]), ...h.slice(1, 5).map(mpStr), ...h.slice(5, 8).map(mpInt), mpStr(h[8]), mpStr(h[9])]);
    if (!again.equals(hb) || !Buffer.concat([MAGIC_V2, mpArray(box.map(mpBin))]).equals(data)) throw new Error();
  } catch { throw new Error('malformed'); }
  const [, nonce, ct, sig] = box;
  if (h[0] !== 2) throw new Error('unsupported_version');
  if (nonce.length !== 24) throw new Error('malformed');
  const header = { job_id: h[1], app: h[2], task: h[3], queue: h[4], issued_at: h[5], not_before: h[6], expires_at: h[7], key_id: h[8], signer_id: h[9] };
  if (header.app !== want.app || header.job_id !== want.job_id || header.queue !== want.queue) throw new Error('wrong_destination');
  if (domain === RESULT_DOMAIN) {
    if (![want.task, ''].includes(header.task)) throw new Error('wrong_destination');
  } else {
    if (!want.tasks.includes(header.task)) throw new Error('unknown_task');
    const skew = (want.skew_s ?? 60) * 1000;
    if (header.not_before > want.now_ms + skew || header.issued_at > want.now_ms + skew) throw new Error('not_yet_valid');
    if (header.expires_at < want.now_ms - skew) throw new Error('expired');
  }
  if (kr.revoked.has(header.signer_id) || kr.revoked.has(header.key_id)) throw new Error('revoked_key');
  if (header.signer_id === '') { // AEAD-only: results only, empty signature, active key
    if (domain !== RESULT_DOMAIN) throw new Error('untrusted_signer');
    if (sig.length) throw new Error('malformed');
    if (header.key_id !== kr.active) throw new Error('untrusted_signer');
  } else {
    const verify = kr.verifiers[header.signer_id];
    if (!verify) throw new Error('untrusted_signer');
    if (!verify(Buffer.concat([domain, hb, nonce, ct]), sig)) throw new Error('bad_signature');
  }
  const key = kr.enc[header.key_id];
  if (!key) throw new Error('unknown_key');
  let plaintext;
  try { plaintext = xaesOpen(key, nonce, ct, hb); } catch { throw new Error('decryption_failed'); }
  return { header, plaintext };
}
function openJob(kr, data, want) { // check 12, shallow: the top-level fields of a job body
  const opened = openEnvelope(kr, data, JOB_DOMAIN, want);
  let body;
  try { body = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(opened.plaintext)); } catch { throw new Error('malformed'); }
  if (!body || typeof body !== 'object' || !('payload' in body) || Object.keys(body).some((k) => !['payload', 'principal', 'meta'].includes(k))) throw new Error('malformed');
  return opened;
}
function openResult(kr, data, want) {
  const { header, plaintext } = openEnvelope(kr, data, RESULT_DOMAIN, want);
  const body = JSON.parse(plaintext.toString('utf8'));
  if (typeof body.status !== 'string') throw new Error('malformed');
  // A task-less result is a worker's REJECTED record: accepted only as such, without a value.
  if (header.task !== want.task && (body.status !== 'rejected' || 'value' in body)) throw new Error('wrong_destination');
  return body;
}

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

// --- modes -------------------------------------------------------------------------
function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0 && fallback === undefined) throw new Error(`--${name} is required`);
  return i < 0 ? fallback : process.argv[i + 1];
}
function checkVectors(path) {
  const doc = JSON.parse(fs.readFileSync(path, 'utf8'));
  for (const v of doc.vectors) {
    const kr = loadKeyring(v.keyring);
    const j = v.job;
    const want = { app: j.app, job_id: j.job_id, task: j.task, queue: j.queue };
    if (kr.sign) { // reproduce the sealed job byte for byte (ed25519 is deterministic too)
      const got = sealJob(kr, j, Buffer.from(j.nonce, 'hex')).toString('hex');
      if (got !== v.envelope) throw new Error(`${v.name}: job envelope differs`);
      const opened = openJob(kr, Buffer.from(v.envelope, 'hex'), { ...want, tasks: [j.task], now_ms: j.issued_at_ms });
      if (opened.plaintext.toString() !== v.envelope_parts.plaintext) throw new Error(`${v.name}: job plaintext differs`);
    }
    const body = openResult(kr, Buffer.from(v.result_envelope, 'hex'), want);
    const expect = v.result.body;
    if (body.status !== expect.status || JSON.stringify(body.value) !== expect.value || body.attempts !== expect.attempts) throw new Error(`${v.name}: result differs`);
    console.log(`vector ${v.name}: ok`);
  }
}
function checkRefusals(path) { // docs/envelope.md: each must be refused with its reason
  const doc = JSON.parse(fs.readFileSync(path, 'utf8'));
  for (const v of doc.vectors) {
    const o = { ...doc.open, ...v.open };
    const kr = loadKeyring(v.keyring || doc.keyring);
    let reason = 'opened';
    try { openJob(kr, Buffer.from(v.envelope, 'hex'), o); } catch (e) { reason = e.message; }
    // This producer reads v2 only: a v1 envelope is refused by its tag, as with accept_v1=False.
    if (reason !== v.reason) throw new Error(`refusal ${v.name}: expected ${v.reason}, got ${reason}`);
    console.log(`refusal ${v.name}: ${reason}`);
  }
}
async function produce() {
  const kr = loadKeyring(JSON.parse(fs.readFileSync(arg('keys'), 'utf8')));
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
  await redisCommand(redis, ['XADD', `${prefix}stream`, '*', 'id', job.job_id, 'env', sealJob(kr, job), 'att', '1', 'at', (now / 1000).toFixed(6)]);
  const key = `${prefix}result:${job.job_id}`;
  const deadline = Date.now() + Number(arg('timeout', '15')) * 1000;
  while (Date.now() < deadline) {
    const raw = await redisCommand(redis, ['BLMOVE', key, key, 'LEFT', 'LEFT', '1']);
    if (raw) {
      console.log(JSON.stringify({ job_id: job.job_id, result: openResult(kr, raw, job) }));
      return;
    }
  }
  throw new Error(`no result for job ${job.job_id} in time`);
}

const mode = process.argv.includes('--vectors') ? () => checkVectors(arg('vectors'))
  : process.argv.includes('--refusals') ? () => checkRefusals(arg('refusals')) : produce;
Promise.resolve().then(mode)
  .catch((e) => { console.error(`producer: ${e.message}`); process.exit(1); });
