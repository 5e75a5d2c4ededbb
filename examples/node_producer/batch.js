// Batch signatures (docs/envelope.md, "Batch signatures"): the RFC 9162 Merkle tree, the
// proof a batch-signed job carries, and the root message its signature covers. Verify
// side only: this example produces single signatures, and verifies both forms.
'use strict';
const crypto = require('crypto');

const BATCH_DOMAIN = Buffer.from('vaultq/v1/batch\0');
const MAX_LEAVES = 65536;
const sha256 = (...parts) => crypto.createHash('sha256').update(Buffer.concat(parts)).digest();
const leafHash = (input) => sha256(Buffer.from([0]), input);
const node = (l, r) => sha256(Buffer.from([1]), l, r);
const split = (n) => { let k = 1; while (k * 2 < n) k *= 2; return k; }; // largest power of 2 < n

function treeRoot(leaves) {
  if (leaves.length === 1) return leaves[0];
  const k = split(leaves.length);
  return node(treeRoot(leaves.slice(0, k)), treeRoot(leaves.slice(k)));
}
function auditPath(leaves, index) { // RFC 9162 2.1.3.1, bottom up
  if (leaves.length === 1) return [];
  const k = split(leaves.length);
  return index < k
    ? [...auditPath(leaves.slice(0, k), index), treeRoot(leaves.slice(k))]
    : [...auditPath(leaves.slice(k), index - k), treeRoot(leaves.slice(0, k))];
}
function pathLength(index, count) {
  let n = 0;
  while (count > 1) {
    const k = split(count);
    if (index < k) count = k; else { index -= k; count -= k; }
    n += 1;
  }
  return n;
}
// proof = index (u32 BE) || count (u32 BE) || path (32 bytes each); null when malformed.
function decodeProof(buf) {
  if (buf.length < 8) return null;
  const index = buf.readUInt32BE(0);
  const count = buf.readUInt32BE(4);
  if (count < 1 || count > MAX_LEAVES || index >= count) return null;
  if (buf.length - 8 !== 32 * pathLength(index, count)) return null;
  const path = [];
  for (let at = 8; at < buf.length; at += 32) path.push(buf.subarray(at, at + 32));
  return { index, count, path };
}
function rootFromPath(leaf, index, count, path) { // RFC 9162 2.1.3.2
  if (index >= count || path.length !== pathLength(index, count)) return null;
  let fn = index; let sn = count - 1; let r = leaf;
  for (const p of path) {
    if (sn === 0) return null;
    if (fn % 2 === 1 || fn === sn) {
      r = node(p, r);
      while (fn % 2 === 0 && fn !== 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
    } else {
      r = node(r, p);
    }
    fn = Math.floor(fn / 2); sn = Math.floor(sn / 2);
  }
  return sn === 0 ? r : null;
}
function rootMessage(signerId, count, root) {
  const id = Buffer.from(signerId, 'utf8');
  const n = Buffer.alloc(4); n.writeUInt32BE(count);
  return Buffer.concat([BATCH_DOMAIN, Buffer.from([id.length]), id, n, root]);
}
// Check 9 for a batch-signed job: the path from this envelope's leaf must lead to a root
// whose signature `verify` accepts.
function batchVerifies(signed, proof, signerId, sig, verify) {
  const root = rootFromPath(leafHash(signed), proof.index, proof.count, proof.path);
  return root !== null && verify(rootMessage(signerId, proof.count, root), sig);
}

module.exports = { BATCH_DOMAIN, MAX_LEAVES, leafHash, treeRoot, auditPath, decodeProof, rootFromPath, rootMessage, batchVerifies };
