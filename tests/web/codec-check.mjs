// Checks the web page's codec (nodes/web/codec.js) against vectors written by the Rust
// crate: `node tests/web/codec-check.mjs <vectors.json>`.
//
// The file is a JSON array of { "type": "ClientRequest" | "ClientReply" | "TimelineUp" |
// "TimelineDown", "hex": "<frame body as hex>", "json": <serde_json of the message> }.
// For each vector: decode the body, encode the decoded value again and compare the
// bytes with `hex`, and compare the decoded value (as plain JSON) with `json`.
// One line per vector on stdout; exit status 1 on any mismatch, 2 on bad usage.

import { readFileSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import path from 'node:path';

const here = path.dirname(fileURLToPath(import.meta.url));
const codecPath = process.env.TSN_CODEC_JS || path.join(here, '..', '..', 'nodes', 'web', 'codec.js');
const codec = await import(pathToFileURL(codecPath).href);

const CODECS = {
  ClientRequest: [codec.decodeClientRequest, codec.encodeClientRequest],
  ClientReply: [codec.decodeClientReply, codec.encodeClientReply],
  TimelineUp: [codec.decodeTimelineUp, codec.encodeTimelineUp],
  TimelineDown: [codec.decodeTimelineDown, codec.encodeTimelineDown],
};

function fromHex(hex) {
  if (typeof hex !== 'string' || hex.length % 2 !== 0 || /[^0-9a-fA-F]/.test(hex)) {
    throw new Error(`not hex: ${JSON.stringify(hex)}`);
  }
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

function toHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** The decoded value as serde_json would write it: BigInt -> number, bytes -> array. */
function toPlain(v) {
  if (typeof v === 'bigint') {
    if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < -BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new Error(`integer ${v} is beyond 2^53: the vectors must keep below it`);
    }
    return Number(v);
  }
  if (v instanceof Uint8Array) return Array.from(v);
  if (Array.isArray(v)) return v.map(toPlain);
  if (v !== null && typeof v === 'object') {
    const out = {};
    for (const [k, x] of Object.entries(v)) out[k] = toPlain(x);
    return out;
  }
  return v;
}

/** Where `a` and `b` differ (a path and both values), or null if they are equal. */
function difference(a, b, where = '$') {
  if (Array.isArray(a) || Array.isArray(b)) {
    if (!Array.isArray(a) || !Array.isArray(b)) return `${where}: ${show(a)} vs ${show(b)}`;
    if (a.length !== b.length) return `${where}: length ${a.length} vs ${b.length}`;
    for (let i = 0; i < a.length; i++) {
      const d = difference(a[i], b[i], `${where}[${i}]`);
      if (d) return d;
    }
    return null;
  }
  if (a !== null && b !== null && typeof a === 'object' && typeof b === 'object') {
    const ka = Object.keys(a).sort();
    const kb = Object.keys(b).sort();
    if (ka.join('\0') !== kb.join('\0')) {
      return `${where}: keys ${JSON.stringify(ka)} vs ${JSON.stringify(kb)}`;
    }
    for (const k of ka) {
      const d = difference(a[k], b[k], `${where}.${k}`);
      if (d) return d;
    }
    return null;
  }
  return Object.is(a, b) ? null : `${where}: ${show(a)} vs ${show(b)}`;
}

function show(v) {
  return JSON.stringify(v) ?? String(v);
}

function check(vector, index) {
  const type = vector && vector.type;
  const prefix = typeof vector?.hex === 'string' ? vector.hex.slice(0, 16) : '?';
  const pair = CODECS[type];
  if (!pair) return `MISMATCH #${index} ${type} ${prefix}: unknown type`;
  const [decode, encode] = pair;
  let body;
  let decoded;
  try {
    body = fromHex(vector.hex);
    decoded = decode(body);
  } catch (e) {
    return `MISMATCH #${index} ${type} ${prefix}: decode failed: ${e.message}`;
  }
  let plain;
  try {
    plain = toPlain(decoded);
  } catch (e) {
    return `MISMATCH #${index} ${type} ${prefix}: ${e.message}`;
  }
  const problems = [];
  const d = difference(plain, vector.json);
  if (d) problems.push(`decoded ${show(plain)} but json is ${show(vector.json)} (at ${d})`);
  try {
    const again = encode(decoded);
    const hex = toHex(again);
    if (hex !== vector.hex.toLowerCase()) problems.push(`re-encoded as ${hex}, expected ${vector.hex.toLowerCase()}`);
  } catch (e) {
    problems.push(`re-encode failed: ${e.message}`);
  }
  if (problems.length) return `MISMATCH #${index} ${type} ${prefix}: ${problems.join('; ')}`;
  return `ok ${type} ${prefix}`;
}

const file = process.argv[2];
if (!file) {
  process.stderr.write('usage: node codec-check.mjs <vectors.json>\n');
  process.exit(2);
}
let vectors;
try {
  vectors = JSON.parse(readFileSync(file, 'utf8'));
} catch (e) {
  process.stderr.write(`cannot read ${file}: ${e.message}\n`);
  process.exit(2);
}
if (!Array.isArray(vectors)) {
  process.stderr.write(`${file}: expected a JSON array of vectors\n`);
  process.exit(2);
}

let bad = 0;
vectors.forEach((v, i) => {
  const line = check(v, i);
  if (!line.startsWith('ok ')) bad += 1;
  process.stdout.write(`${line}\n`);
});
process.stdout.write(`${vectors.length - bad} passed, ${bad} failed\n`);
process.exit(bad === 0 ? 0 : 1);
