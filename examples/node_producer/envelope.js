// vaultq envelopes v1 and v2 in Node.js, written from docs/envelope.md and docs/keys.md
// alone. Built-in `crypto` only: a minimal msgpack subset, XAES-256-GCM from AES-256
// blocks, keyring checks (canonical base64url, Ed25519 point checks). Used by
// producer.js (enqueue into Redis) and check_vectors.js (the test vectors).
'use strict';
const crypto = require('crypto');
const { decodeProof, batchVerifies } = require('./batch');

const JOB_DOMAIN = Buffer.from('vaultq/v1/job\0');
const RESULT_DOMAIN = Buffer.from('vaultq/v1/result\0');
const NONCE = { 1: 12, 2: 24 };
const MAX_TIME_MS = 2 ** 53 - 1;
const JOB_ID_FORM = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/; // JS `$` never matches before "\n"

// --- msgpack: shortest forms only (the spec refuses anything else) --------------------
function mpInt(n) { // non-negative only: header integers are versions and times
  const big = BigInt(n);
  if (big < 0n || big >= 2n ** 64n) throw new Error('header integers must be 0..2^64-1');
  if (big < 0x80n) return Buffer.from([Number(big)]);
  if (big < 0x100n) return Buffer.from([0xcc, Number(big)]);
  if (big < 0x10000n) { const b = Buffer.alloc(3); b[0] = 0xcd; b.writeUInt16BE(Number(big), 1); return b; }
  if (big < 0x100000000n) { const b = Buffer.alloc(5); b[0] = 0xce; b.writeUInt32BE(Number(big), 1); return b; }
  const b = Buffer.alloc(9); b[0] = 0xcf; b.writeBigUInt64BE(big, 1); return b;
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

function mpDecode(buf) { // the subset envelopes use; anything else throws
  let o = 0;
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  function read() {
    const t = buf[o++];
    const u = (w) => { const v = w === 8 ? buf.readBigUInt64BE(o) : buf.readUIntBE(o, w); o += w; return v; };
    const bytes = (n) => { const v = buf.subarray(o, o + n); o += n; if (v.length !== n) throw new Error('truncated'); return v; };
    const str = (n) => utf8.decode(bytes(n));
    if (t < 0x80) return t;
    if ((t & 0xf0) === 0x90) return Array.from({ length: t & 0x0f }, read);
    if ((t & 0xe0) === 0xa0) return str(t & 0x1f);
    switch (t) {
      case 0xcc: return u(1); case 0xcd: return u(2); case 0xce: return u(4);
      case 0xcf: { const v = u(8); return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v; }
      case 0xd9: return str(u(1)); case 0xda: return str(u(2)); case 0xdb: return str(u(4));
      case 0xc4: return Buffer.from(bytes(u(1))); case 0xc5: return Buffer.from(bytes(u(2)));
      case 0xc6: return Buffer.from(bytes(u(4)));
      default: throw new Error(`msgpack type 0x${t.toString(16)} is not used by envelopes`);
    }
  }
  const value = read();
  if (o !== buf.length) throw new Error('trailing bytes');
  return value;
}

// --- keyring (docs/keys.md): every check vaultq makes at load --------------------------
function b64(text, where) { // canonical base64url only: one spelling per key
  if (typeof text !== 'string' || !/^[A-Za-z0-9_-]*={0,2}$/.test(text)) throw new Error(`bad_base64: ${where}`);
  const bare = text.replace(/=+$/, '');
  if (bare.length % 4 === 1) throw new Error(`bad_base64: ${where}`);
  const raw = Buffer.from(bare, 'base64url');
  const canonical = raw.toString('base64url');
  if (bare !== canonical || (text !== bare && text !== canonical + '='.repeat((4 - canonical.length % 4) % 4))) {
    throw new Error(`non_canonical_base64: ${where}`);
  }
  return raw;
}
const P = 2n ** 255n - 19n;
const modpow = (b, e, m) => { let r = 1n; b %= m; for (; e > 0n; e >>= 1n, b = b * b % m) if (e & 1n) r = r * b % m; return r; };
const mod = (a) => ((a % P) + P) % P;
const D = mod(-121665n * modpow(121666n, P - 2n, P));
const Y8 = ['26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05',
  'c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a'].map((h) => BigInt('0x' + Buffer.from(h, 'hex').reverse().toString('hex')));
const SMALL_ORDER_Y = new Set([0n, 1n, P - 1n, ...Y8]);
function ed25519PublicProblem(raw) { // RFC 8032 §5.1.3 decoding, plus small order
  if (raw.length !== 32) return 'wrong_length';
  const v = BigInt('0x' + Buffer.from(raw).reverse().toString('hex'));
  const y = v & ((1n << 255n) - 1n); const sign = v >> 255n;
  if (y >= P) return 'non_canonical_point';
  const x2 = mod((y * y - 1n) * modpow(D * y * y + 1n, P - 2n, P));
  let x = modpow(x2, (P + 3n) / 8n, P);
  if (mod(x * x - x2) !== 0n) x = x * modpow(2n, (P - 1n) / 4n, P) % P;
  if (mod(x * x - x2) !== 0n) return 'off_curve';
  if (x === 0n && sign) return 'non_canonical_point';
  return SMALL_ORDER_Y.has(y) ? 'small_order' : null;
}
function ed25519Private(seed) {
  const der = Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), seed]);
  return crypto.createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
}
function ed25519Public(raw) {
  return crypto.createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: raw.toString('base64url') }, format: 'jwk' });
}
function loadKeyring(doc) { // JSON text or parsed; throws Error('<problem>: <where>')
  if (typeof doc === 'string') {
    const text = doc;
    doc = JSON.parse(text);
    if (hasDuplicateKeys(text)) throw new Error('duplicate_key: a JSON object repeats a key');
  }
  const enc = {};
  for (const [id, k] of Object.entries(doc.encryption.keys)) {
    enc[id] = b64(k, `encryption.keys.${id}`);
    if (enc[id].length !== 32) throw new Error(`wrong_length: encryption.keys.${id}`);
  }
  const verifiers = {}; // signer id -> (data, sig) => bool
  let sign = null;
  const signing = doc.signing || { keys: {} };
  for (const [id, e] of Object.entries(signing.keys || {})) {
    const raw = b64(e.key, `signing.keys.${id}`);
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
    const raw = b64(e.key, `verify.${id}`);
    const problem = ed25519PublicProblem(raw); // OpenSSL checks none of this
    if (problem) throw new Error(`${problem}: verify.${id}`);
    const pub = ed25519Public(raw);
    verifiers[id] = (d, s) => s.length === 64 && crypto.verify(null, d, pub, s);
  }
  const revoked = new Set(doc.revoked || []);
  return { enc, active: doc.encryption.active, signerId: sign ? signing.active : null, sign, verifiers, revoked };
}

// --- JSON: repeated keys are refused (docs/envelope.md, Body JSON) ----------------------
// scanJson(text) walks valid JSON (parse it first): whether any object repeats a key
// (compared unescaped) or any string holds a lone surrogate, and the raw text of every
// member's value by its path (raw.get(JSON.stringify(['principal', 'attrs', 'n']))).
function scanJson(text) {
  let i = 0; let dup = false; let lone = false; const raw = new Map();
  const ws = () => { while (i < text.length && ' \t\n\r'.includes(text[i])) i++; };
  const str = () => {
    const s = i++; while (text[i] !== '"') i += text[i] === '\\' ? 2 : 1; i++;
    const v = JSON.parse(text.slice(s, i)); lone = lone || !v.isWellFormed(); return v;
  };
  function value(path) {
    ws();
    if (text[i] === '{' || text[i] === '[') {
      const close = text[i] === '{' ? '}' : ']'; const keys = new Set(); i++; ws();
      if (text[i] === close) { i++; return; }
      for (let n = 0; ; n++) {
        let k = n;
        if (close === '}') { ws(); k = str(); dup = dup || keys.has(k); keys.add(k); ws(); i++; }
        ws(); const start = i; value([...path, k]);
        raw.set(JSON.stringify([...path, k]), text.slice(start, i));
        ws(); if (text[i++] === close) return;
      }
    }
    if (text[i] === '"') { str(); return; }
    while (i < text.length && !',]} \t\n\r'.includes(text[i])) i++;
  }
  value([]);
  const top = (k) => raw.get(JSON.stringify([k]));
  return { dup: dup || lone, top, raw };
}
const hasDuplicateKeys = (text) => scanJson(text).dup;

// --- AEADs: XAES-256-GCM (C2SP) for v2, AES-256-GCM for v1 ------------------------------
function aesBlock(key, block) {
  const c = crypto.createCipheriv('aes-256-ecb', key, null);
  c.setAutoPadding(false);
  return Buffer.concat([c.update(block), c.final()]);
}
function gcmKeyNonce(key, nonce) { // v1: the key itself; v2: a key derived per nonce
  if (nonce.length === 12) return [key, nonce];
  const L = aesBlock(key, Buffer.alloc(16));
  const K1 = Buffer.alloc(16);
  for (let i = 0; i < 16; i++) K1[i] = ((L[i] << 1) | (i < 15 ? L[i + 1] >> 7 : 0)) & 0xff;
  if (L[0] & 0x80) K1[15] ^= 0x87;
  const M = (c) => Buffer.concat([Buffer.from([0x00, c, 0x58, 0x00]), nonce.subarray(0, 12)]).map((b, i) => b ^ K1[i]);
  return [Buffer.concat([aesBlock(key, M(1)), aesBlock(key, M(2))]), nonce.subarray(12)];
}
function aeadSeal(key, nonce, plaintext, aad) {
  const c = crypto.createCipheriv('aes-256-gcm', ...gcmKeyNonce(key, nonce));
  c.setAAD(aad);
  return Buffer.concat([c.update(plaintext), c.final(), c.getAuthTag()]);
}
function aeadOpen(key, nonce, ciphertext, aad) {
  const d = crypto.createDecipheriv('aes-256-gcm', ...gcmKeyNonce(key, nonce));
  d.setAAD(aad);
  d.setAuthTag(ciphertext.subarray(ciphertext.length - 16));
  return Buffer.concat([d.update(ciphertext.subarray(0, ciphertext.length - 16)), d.final()]);
}

// --- envelopes (docs/envelope.md) ------------------------------------------------------
function roundHalfEven(x) { // Python's round(): ties to even (Math.round rounds half up)
  const f = Math.floor(x); const diff = x - f;
  return diff > 0.5 || (diff === 0.5 && f % 2 !== 0) ? f + 1 : f;
}
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
function sealJob(kr, job, nonce = crypto.randomBytes(24)) { // the nonce's size picks v1 or v2
  const version = nonce.length === 12 ? 1 : 2;
  if (!JOB_ID_FORM.test(job.job_id)) throw new Error('job ids must match the documented form');
  const header = mpArray([mpInt(version), mpStr(job.job_id), mpStr(job.app), mpStr(job.task), mpStr(job.queue),
    mpInt(job.issued_at_ms), mpInt(job.not_before_ms), mpInt(job.expires_at_ms), mpStr(kr.active), mpStr(kr.signerId)]);
  const ct = aeadSeal(kr.enc[kr.active], nonce, jobPlaintext(job.payload, job.principal, job.meta), header);
  const sig = kr.sign(Buffer.concat([JOB_DOMAIN, header, nonce, ct]));
  return Buffer.concat([Buffer.from([0x56, 0x51, version]), mpArray([mpBin(header), mpBin(nonce), mpBin(ct), mpBin(sig)])]);
}
// Opens an envelope in the spec's check order; `domain` picks job or result rules.
// `want`: app, job_id, queue, accept_v1, and task (results) or tasks + now_ms|now_s +
// skew_s (jobs). Throws an Error whose message is the spec's reason code.
function openEnvelope(kr, data, domain, want) {
  if (data.length > (want.max_size || 1048576)) throw new Error('too_large');
  const version = data[2];
  if (data.length < 3 || data[0] !== 0x56 || data[1] !== 0x51 || !(version in NONCE)) throw new Error('unsupported_version');
  if (version === 1 && want.accept_v1 === false) throw new Error('unsupported_version');
  let box, hb, h;
  try {
    box = mpDecode(data.subarray(3));
    // 4 bins, or 5 for a batch-signed job (its proof last; results never carry one).
    const sizes = domain === JOB_DOMAIN ? [4, 5] : [4];
    if (!Array.isArray(box) || !sizes.includes(box.length) || !box.every(Buffer.isBuffer)) throw new Error();
    hb = box[0];
    h = mpDecode(hb);
    const isInt = (x) => typeof x === 'number' || typeof x === 'bigint';
    const ints = new Set([0, 5, 6, 7]);
    if (!Array.isArray(h) || h.length !== 10 || h.some((x, i) => (ints.has(i) ? !isInt(x) : typeof x !== 'string'))) throw new Error();
    // Canonical framing: re-encode and compare (the spec refuses every longer form).
    const again = mpArray([mpInt(h[0]), ...h.slice(1, 5).map(mpStr), ...h.slice(5, 8).map(mpInt), mpStr(h[8]), mpStr(h[9])]);
    if (!again.equals(hb) || !Buffer.concat([data.subarray(0, 3), mpArray(box.map(mpBin))]).equals(data)) throw new Error();
  } catch { throw new Error('malformed'); }
  const [, nonce, ct, sig] = box;
  if (h[0] !== version) throw new Error('unsupported_version');
  if (nonce.length !== NONCE[version]) throw new Error('malformed');
  const inRange = (t) => typeof t === 'number' && t >= 0 && t <= MAX_TIME_MS;
  if (!JOB_ID_FORM.test(h[1]) || !h.slice(5, 8).every(inRange)) throw new Error('malformed');
  const proof = box.length === 5 ? decodeProof(box[4]) : null;
  if (box.length === 5 && !proof) throw new Error('malformed');
  const header = { version, job_id: h[1], app: h[2], task: h[3], queue: h[4], issued_at: h[5], not_before: h[6], expires_at: h[7], key_id: h[8], signer_id: h[9] };
  if (header.app !== want.app || header.job_id !== want.job_id || header.queue !== want.queue) throw new Error('wrong_destination');
  if (domain === RESULT_DOMAIN) {
    if (![want.task, ''].includes(header.task)) throw new Error('wrong_destination');
  } else {
    if (!want.tasks.includes(header.task)) throw new Error('unknown_task');
    const skew = (want.skew_s ?? 60) * 1000;
    const now = want.now_s !== undefined ? roundHalfEven(want.now_s * 1000) : want.now_ms;
    if (header.not_before > now + skew || header.issued_at > now + skew) throw new Error('not_yet_valid');
    if (header.expires_at < now - skew) throw new Error('expired');
  }
  if (kr.revoked.has(header.signer_id) || kr.revoked.has(header.key_id)) throw new Error('revoked_key');
  if (header.signer_id === '') { // AEAD-only: results only, empty signature, active key
    if (domain !== RESULT_DOMAIN) throw new Error('untrusted_signer');
    if (sig.length) throw new Error('malformed');
    if (header.key_id !== kr.active) throw new Error('untrusted_signer');
  } else {
    const verify = kr.verifiers[header.signer_id];
    if (!verify) throw new Error('untrusted_signer');
    const signed = Buffer.concat([domain, hb, nonce, ct]);
    const ok = proof ? batchVerifies(signed, proof, header.signer_id, sig, verify) : verify(signed, sig);
    if (!ok) throw new Error('bad_signature');
  }
  const key = kr.enc[header.key_id];
  if (!key) throw new Error('unknown_key');
  let plaintext;
  try { plaintext = aeadOpen(key, nonce, ct, hb); } catch { throw new Error('decryption_failed'); }
  return { header, plaintext };
}
function parseBody(plaintext) { // one JSON object, valid UTF-8, no repeated key anywhere
  try {
    const text = new TextDecoder('utf-8', { fatal: true }).decode(plaintext);
    const body = JSON.parse(text);
    const { dup, top, raw } = scanJson(text);
    if (isObj(body) && !dup) return { body, top, raw };
  } catch { /* refused below */ }
  throw new Error('malformed');
}
const isObj = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
const only = (o, keys) => Object.keys(o).every((k) => keys.includes(k));
const strings = (v) => Array.isArray(v) && v.every((s) => typeof s === 'string');
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/; // C0, DEL, C1
function attrOk(v, text) { // string, boolean, or a JSON integer within +-(2^53 - 1)
  if (typeof v === 'string' || typeof v === 'boolean') return true;
  return /^-?[0-9]+$/.test(text) && BigInt(text) <= 2n ** 53n - 1n && BigInt(text) >= 1n - 2n ** 53n;
}
function principalOk(p, raw) { // docs/envelope.md, Body JSON: the principal rows
  if (!isObj(p) || !only(p, ['id', 'roles', 'permissions', 'attrs']) || typeof p.id !== 'string') return false;
  const chars = [...p.id].length; // characters (code points), not UTF-16 units
  return chars >= 1 && chars <= 256 && !CONTROL.test(p.id)
    && (!('roles' in p) || strings(p.roles)) && (!('permissions' in p) || strings(p.permissions))
    && (!('attrs' in p) || (isObj(p.attrs) && Object.keys(p.attrs).every((k) => attrOk(p.attrs[k], raw.get(JSON.stringify(['principal', 'attrs', k]))))));
}
const intIn = (v, lo, hi) => Number.isInteger(v) && v >= lo && v <= hi;
const strOrNull = (v) => v == null || typeof v === 'string';
function flowOk(f) { // a workflow step (docs/workflows.md); `next` is a base64 envelope
  return isObj(f) && only(f, ['workflow', 'step', 'steps', 'input_task', 'input_queue', 'next']) && typeof f.workflow === 'string'
    && intIn(f.step, 0, 1023) && intIn(f.steps, 1, 1024) && ['input_task', 'input_queue', 'next'].every((k) => strOrNull(f[k]));
}
function metaOk(m) { // absent fields and nulls are unset; timeout > 0 seconds
  return isObj(m) && only(m, ['parent_id', 'trace', 'timeout', 'flow']) && (m.flow == null || flowOk(m.flow)) && strOrNull(m.parent_id)
    && (m.trace == null || (isObj(m.trace) && Object.values(m.trace).every((v) => typeof v === 'string')))
    && (m.timeout == null || (typeof m.timeout === 'number' && m.timeout > 0));
}
function openJob(kr, data, want) { // check 12: every job body field, as the spec's table says
  const opened = openEnvelope(kr, data, JOB_DOMAIN, want);
  const { body, raw } = parseBody(opened.plaintext);
  if (!('payload' in body) || !only(body, ['payload', 'principal', 'meta'])
    || (body.principal != null && !principalOk(body.principal, raw)) || ('meta' in body && !metaOk(body.meta))) throw new Error('malformed');
  return opened;
}
const RESULT_FIELDS = ['status', 'value', 'error_type', 'error', 'attempts', 'started_at', 'finished_at', 'worker_id', 'principal_id'];
function openResult(kr, data, want) { // every result body field, as the spec's table says
  const { header, plaintext } = openEnvelope(kr, data, RESULT_DOMAIN, want);
  const { body, top } = parseBody(plaintext);
  const strOrNull = (k) => body[k] == null || typeof body[k] === 'string';
  const timeOk = (k) => body[k] == null || (typeof body[k] === 'number' && body[k] >= 0);
  if (typeof body.status !== 'string' || Object.keys(body).some((k) => !RESULT_FIELDS.includes(k))
    || !['error_type', 'error', 'worker_id', 'principal_id'].every(strOrNull) || !['started_at', 'finished_at'].every(timeOk)
    || ('attempts' in body && !(/^-?[0-9]+$/.test(top('attempts')) && body.attempts >= 0 && body.attempts <= 2 ** 31 - 1))) {
    throw new Error('malformed'); // attempts must be a JSON integer: 1.0 is refused
  }
  // A task-less result is a worker's REJECTED record: accepted only as such, without a value.
  if (header.task !== want.task && (body.status !== 'rejected' || 'value' in body)) throw new Error('wrong_destination');
  return body;
}

// Redis stream fields (docs/redis.md): a worker dead-letters an entry with other forms.
const ATT_FORM = /^[1-9][0-9]{0,8}$/;
const AT_FORM = /^[0-9]{1,12}(\.[0-9]{1,9})?$/;
const streamFieldsOk = (att, at) => typeof att === 'string' && ATT_FORM.test(att) && typeof at === 'string' && AT_FORM.test(at);

module.exports = { JOB_DOMAIN, loadKeyring, sealJob, openJob, openResult, roundHalfEven, streamFieldsOk };
