#!/usr/bin/env node
// Checks envelope.js against vaultq's test vectors (tests/vectors/), v1 and v2:
//   node check_vectors.js --vectors envelope_v2.json     reproduce and open each envelope,
//                                                        and round each time_rounding case
//   node check_vectors.js --refusals envelope_v2_refusals.json   refuse each, with its
//                                                        reason; open each 'accepted' one
//   node check_vectors.js --keyrings keyring_refusals.json       refuse each keyring
//   node check_vectors.js --stream-fields redis_stream_fields.json  att/at forms
//   node check_vectors.js --batch envelope_batch.json    trees, batch-signed jobs (open
//                                                        each), refusals, accepted ones
// One line per vector on stdout; exit 1 at the first disagreement.
'use strict';
const fs = require('fs');
const { loadKeyring, sealJob, openJob, openResult, roundHalfEven, streamFieldsOk } = require('./envelope');
const { leafHash, treeRoot, auditPath, rootFromPath, rootMessage } = require('./batch');

function checkVectors(doc) {
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
  for (const t of doc.time_rounding) { // header ms from seconds: ties to even
    if (roundHalfEven(t.seconds * 1000) !== t.ms) throw new Error(`rounding ${t.seconds}: expected ${t.ms}`);
    console.log(`rounding ${t.seconds}: ${t.ms}`);
  }
}
function checkRefusals(doc) { // docs/envelope.md: each must be refused with its reason
  for (const v of doc.vectors) {
    const kr = loadKeyring(v.keyring || doc.keyring);
    let reason = 'opened';
    try { openJob(kr, Buffer.from(v.envelope, 'hex'), { ...doc.open, ...v.open }); } catch (e) { reason = e.message; }
    if (reason !== v.reason) throw new Error(`refusal ${v.name}: expected ${v.reason}, got ${reason}`);
    console.log(`refusal ${v.name}: ${reason}`);
  }
  for (const v of doc.accepted) { // the other side of each boundary
    openJob(loadKeyring(doc.keyring), Buffer.from(v.envelope, 'hex'), { ...doc.open, ...v.open });
    console.log(`accepted ${v.name}: ok`);
  }
  const resultWant = (v) => { const o = { ...doc.open, ...v.open }; return { ...o, task: o.tasks[0] }; };
  for (const v of doc.results.refused) { // results: open_result's rules
    let reason = 'opened';
    try { openResult(loadKeyring(doc.keyring), Buffer.from(v.envelope, 'hex'), resultWant(v)); } catch (e) { reason = e.message; }
    if (reason !== v.reason) throw new Error(`result ${v.name}: expected ${v.reason}, got ${reason}`);
    console.log(`result ${v.name}: ${reason}`);
  }
  for (const v of doc.results.accepted) {
    openResult(loadKeyring(doc.keyring), Buffer.from(v.envelope, 'hex'), resultWant(v));
    console.log(`result ${v.name}: ok`);
  }
}
function checkKeyrings(doc) { // docs/keys.md: none of these keyrings may load
  for (const v of doc.vectors) {
    let problem = 'loaded';
    try { loadKeyring(JSON.stringify(v.keyring)); } catch (e) { problem = e.message.split(':')[0]; }
    if (problem !== v.problem) throw new Error(`keyring ${v.name}: expected ${v.problem}, got ${problem}`);
    console.log(`keyring ${v.name}: ${problem}`);
  }
  for (const v of doc.accepted) {
    loadKeyring(JSON.stringify(v.keyring));
    console.log(`accepted ${v.name}: ok`);
  }
}

function checkStreamFields(doc) { // docs/redis.md: the att and at forms a worker delivers
  const good = { att: doc.att.accepted[0], at: doc.at.accepted[0] };
  for (const field of ['att', 'at']) {
    for (const [verdict, values] of [['accepted', doc[field].accepted], ['refused', doc[field].refused]]) {
      for (const v of values) {
        const ok = streamFieldsOk(field === 'att' ? v : good.att, field === 'at' ? v : good.at);
        if (ok !== (verdict === 'accepted')) throw new Error(`${field} ${JSON.stringify(v)}: expected ${verdict}`);
        console.log(`${field} ${JSON.stringify(v)}: ${verdict}`);
      }
    }
  }
}

function checkBatch(doc) { // docs/envelope.md, Batch signatures
  const hex = (b) => b.toString('hex');
  for (const t of doc.tree) {
    const leaves = t.leaf_inputs.map((x) => leafHash(Buffer.from(x, 'hex')));
    if (leaves.map(hex).join() !== t.leaf_hashes.join() || hex(treeRoot(leaves)) !== t.root) throw new Error(`tree ${t.count}: root differs`);
    leaves.forEach((leaf, i) => {
      const path = auditPath(leaves, i);
      if (path.map(hex).join() !== t.paths[i].join()) throw new Error(`tree ${t.count}: path ${i} differs`);
      const root = rootFromPath(leaf, i, t.count, path);
      if (!root || hex(root) !== t.root) throw new Error(`tree ${t.count}: path ${i} does not lead to the root`);
    });
    console.log(`tree ${t.count}: ok`);
  }
  const kr = loadKeyring(doc.keyring);
  for (const b of doc.batches) {
    const root = treeRoot(b.members.map((m) => leafHash(Buffer.from(m.leaf_input, 'hex'))));
    if (hex(root) !== b.root || hex(rootMessage('s00000001', b.count, root)) !== b.root_message) throw new Error(`${b.name}: root differs`);
    for (const m of b.members) {
      const opened = openJob(kr, Buffer.from(m.envelope, 'hex'), { ...doc.open, job_id: m.job.job_id });
      if (JSON.parse(opened.plaintext).payload.order_id !== JSON.parse(m.job.payload).order_id) throw new Error(`${b.name}: payload differs`);
    }
    console.log(`batch ${b.name}: ok`);
  }
  for (const v of doc.refusals) {
    let reason = 'opened';
    try { openJob(loadKeyring(v.keyring || doc.keyring), Buffer.from(v.envelope, 'hex'), { ...doc.open, ...v.open }); } catch (e) { reason = e.message; }
    if (reason !== v.reason) throw new Error(`refusal ${v.name}: expected ${v.reason}, got ${reason}`);
    console.log(`refusal ${v.name}: ${reason}`);
  }
  for (const v of doc.accepted) {
    openJob(kr, Buffer.from(v.envelope, 'hex'), { ...doc.open, ...v.open });
    console.log(`accepted ${v.name}: ok`);
  }
  const want = { ...doc.open, job_id: doc.results.job_id, task: doc.open.tasks[0] };
  openResult(kr, Buffer.from(doc.results.result_envelope, 'hex'), want);
  let reason = 'opened';
  try { openResult(kr, Buffer.from(doc.results.with_proof, 'hex'), want); } catch (e) { reason = e.message; }
  if (reason !== 'malformed') throw new Error(`a result with a proof: expected malformed, got ${reason}`);
  console.log('result with a proof: malformed');
}

const modes = { '--vectors': checkVectors, '--refusals': checkRefusals, '--keyrings': checkKeyrings, '--stream-fields': checkStreamFields, '--batch': checkBatch };
try {
  const [flag, path] = process.argv.slice(2);
  if (!modes[flag] || !path) throw new Error('usage: check_vectors.js --vectors|--refusals|--keyrings|--stream-fields|--batch FILE');
  modes[flag](JSON.parse(fs.readFileSync(path, 'utf8')));
} catch (e) {
  console.error(`check_vectors: ${e.message}`);
  process.exit(1);
}
