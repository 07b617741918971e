// The TSN web client: log in with a key held by this browser, LIST / FOLLOW / UNFOLLOW,
// and a live timeline with a post box, over WebTransport to the user's server.
//
// Everything shown of what others wrote goes through textContent: nothing here parses
// HTML. The page's Content-Security-Policy allows no inline script or style.

import {
  encodeClientRequest,
  decodeClientReply,
  encodeTimelineUp,
  decodeTimelineDown,
  frame,
  FrameReader,
} from './codec.js';

// ---------------------------------------------------------------------------------
// Constants

const MAX_POST_BYTES = 256;
const MAX_USER_ID = 0xffffffff;
const COMMAND_TIMEOUT_MS = 10_000;
const CONNECT_TIMEOUT_MS = 10_000;
/**
 * How long a WebTransport handshake may take. Generous: after failed handshakes Chromium
 * itself delays new ones for a while, and giving up on such a wait would only add a
 * failure.
 */
const HANDSHAKE_TIMEOUT_MS = 30_000;
const BACKOFF_START_MS = 200;
const BACKOFF_MAX_MS = 3_000;
const GIVE_UP_MS = 60_000;
/** A session live at least this long starts its reconnecting from the first delay. */
const STABLE_MS = 5_000;
/**
 * Posts unacknowledged this long make the page ask the coordinator whether the user's
 * server moved; then twice as long each time it names the same one, up to
 * ACK_PROBE_MAX_MS (like the terminal client).
 */
const ACK_SUSPECT_MS = 300;
const ACK_PROBE_MAX_MS = 1_000;
/** Timeline entries kept on the page (the oldest are dropped). */
const TIMELINE_KEEP = 1_000;
/** Ids of entries shown that are remembered, to show each once (the oldest are forgotten). */
const SHOWN_IDS_KEEP = 10_000;

const SUCCESS = 'Command completed successfully';
const UNKNOWN_FAILURE = 'Command failed with unknown reason';
const INVALID_USER = 'Command failed with invalid username';
const KEY_REFUSED = "Login refused: this client does not hold the user's key";

const utf8 = new TextEncoder();

// ---------------------------------------------------------------------------------
// The page's elements

const $ = (id) => {
  const e = document.getElementById(id);
  if (!e) throw new Error(`the page has no #${id}`);
  return e;
};

const ui = {
  status: $('status'),
  message: $('message'),
  userId: $('user-id'),
  login: $('login'),
  keyFile: $('key-file'),
  retryRow: $('retry-row'),
  keyDownloadRow: $('key-download-row'),
  keyDownload: $('key-download'),
  retry: $('retry'),
  followId: $('follow-id'),
  follow: $('follow'),
  unfollow: $('unfollow'),
  list: $('list'),
  users: $('users'),
  followers: $('followers'),
  postText: $('post-text'),
  postBytes: $('post-bytes'),
  post: $('post'),
  timeline: $('timeline'),
};

function setStatus(state, text) {
  ui.status.dataset.state = state;
  ui.status.textContent = text;
}

function setMessage(text, kind = 'info') {
  ui.message.dataset.kind = kind;
  ui.message.textContent = text;
}

// ---------------------------------------------------------------------------------
// Words, as the terminal client says them

function variantName(v) {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object') return Object.keys(v)[0];
  return '';
}

/** The original's words for a CommandError. */
function failureWords(err) {
  switch (variantName(err)) {
    case 'AlreadyExists': return 'Input username already exists, command failed';
    case 'NoSuchUser': return 'Input username does not exists, command failed';
    case 'InvalidUser': return INVALID_USER;
    case 'InvalidCommand': return 'Command failed with invalid command';
    case 'RateLimited': return 'Too many requests from this user: slow down (nothing was stored)';
    case 'KeyMismatch':
    case 'BadProof': return KEY_REFUSED;
    default: return UNKNOWN_FAILURE;
  }
}

/** The words for a command's reply. */
function replyWords(reply) {
  if (reply === 'Ok' || variantName(reply) === 'List') return SUCCESS;
  if (variantName(reply) === 'Failed') return failureWords(reply.Failed);
  return UNKNOWN_FAILURE;
}

function hex4(code) {
  return code.toString(16).toUpperCase().padStart(4, '0');
}

/** Why a post was refused, for its author. */
function refusalWords(reason) {
  const name = variantName(reason);
  if (name === 'PostTooLong') {
    const { len, max } = reason.PostTooLong;
    return `Post refused: it has ${len} bytes, more than the maximum of ${max}`;
  }
  if (name === 'ControlChar') {
    return `Post refused: it holds the control character U+${hex4(reason.ControlChar.code)}, which a post may not hold`;
  }
  if (name === 'Storage') return 'Post refused: the server could not store it';
  return `Post refused: ${failureWords(reason)}`;
}

// ---------------------------------------------------------------------------------
// Text rules shared with the server (tsn_protocol::is_control_char)

/** Whether a post may not hold the code point `cp` (C0 but tab, DEL, C1, bidi controls). */
function isControl(cp) {
  return cp <= 0x08 || (cp >= 0x0a && cp <= 0x1f) || (cp >= 0x7f && cp <= 0x9f)
    || (cp >= 0x202a && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069);
}

function firstControl(text) {
  for (const ch of text) {
    const cp = ch.codePointAt(0);
    if (isControl(cp)) return cp;
  }
  return null;
}

/** `text` with every control character written visibly (`\x1b`, `\u{202e}`). */
function escapeControls(text) {
  if (firstControl(text) === null) return text;
  let out = '';
  for (const ch of text) {
    const cp = ch.codePointAt(0);
    if (!isControl(cp)) out += ch;
    else if (cp < 0x80) out += `\\x${cp.toString(16).padStart(2, '0')}`;
    else out += `\\u{${cp.toString(16)}}`;
  }
  return out;
}

/** A user id typed by a person, or null. */
function parseUserId(text) {
  const t = text.trim();
  if (!/^[0-9]{1,10}$/.test(t)) return null;
  const n = Number(t);
  return n <= MAX_USER_ID ? n : null;
}

// ---------------------------------------------------------------------------------
// Small helpers

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms / 1000} s`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function fromHex(hex) {
  if (typeof hex !== 'string' || hex.length % 2 !== 0 || /[^0-9a-fA-F]/.test(hex)) {
    throw new Error('the server gave a malformed certificate hash');
  }
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

function toHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function sameBytes(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

function base64urlDecode(s) {
  const b64 = s.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (s.length % 4)) % 4);
  return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
}

function randomNonce() {
  const w = crypto.getRandomValues(new Uint32Array(2));
  return (BigInt(w[0]) << 32n) | BigInt(w[1]);
}

/** What signing proves: `tsn login v1\0`, the user (4 bytes big-endian), the challenge. */
function loginMessage(user, challenge) {
  const id = new Uint8Array(4);
  new DataView(id.buffer).setUint32(0, user, false);
  return concat(utf8.encode('tsn login v1'), new Uint8Array([0]), id, challenge);
}

/** A failure that another try will not mend (the words say why). */
class Refusal extends Error {}
/** Work of a session that was since replaced or ended. */
class Stale extends Error {}

// ---------------------------------------------------------------------------------
// Keys: one Ed25519 key per user id, kept in IndexedDB (private part non-extractable)

const DB_NAME = 'tsn';
const KEY_STORE = 'keys';
const memoryKeys = new Map(); // where IndexedDB is not to be had
let dbPromise = null;

function openDb() {
  if (!dbPromise) {
    dbPromise = new Promise((resolve, reject) => {
      if (typeof indexedDB === 'undefined') {
        reject(new Error('no IndexedDB'));
        return;
      }
      const req = indexedDB.open(DB_NAME, 1);
      req.onupgradeneeded = () => req.result.createObjectStore(KEY_STORE);
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
      req.onblocked = () => reject(new Error('IndexedDB is blocked'));
    }).catch((e) => {
      console.warn(`keys are kept in memory only: ${e.message}`);
      return null;
    });
  }
  return dbPromise;
}

async function dbDo(mode, fn) {
  const db = await openDb();
  if (!db) return undefined;
  return new Promise((resolve, reject) => {
    const tx = db.transaction(KEY_STORE, mode);
    const req = fn(tx.objectStore(KEY_STORE));
    tx.oncomplete = () => resolve(req.result);
    tx.onerror = () => reject(tx.error || req.error);
    tx.onabort = () => reject(tx.error || new Error('IndexedDB transaction aborted'));
  });
}

async function loadKey(user) {
  try {
    const rec = await dbDo('readonly', (s) => s.get(user));
    if (rec) return rec;
  } catch (e) {
    console.warn(`reading the key of user ${user}: ${e.message}`);
  }
  return memoryKeys.get(user) || null;
}

/** Stores `rec` for `user`; `replace` false keeps a key already there (returns it). */
async function storeKey(user, rec, replace) {
  memoryKeys.set(user, rec);
  try {
    if (replace) {
      await dbDo('readwrite', (s) => s.put(rec, user));
    } else {
      await dbDo('readwrite', (s) => s.add(rec, user));
    }
  } catch (e) {
    if (!replace && e && e.name === 'ConstraintError') {
      const there = await loadKey(user);
      if (there) {
        memoryKeys.set(user, there);
        return there;
      }
    }
    console.warn(`storing the key of user ${user}: ${e && e.message}`);
  }
  return rec;
}

/** Key files made in this page's lifetime, by user: what "Download key" saves. */
const keyFiles = new Map();

/**
 * This browser's key for `user`, made on first use. It is made once as extractable, to
 * write it out as the terminal client's `user-<id>.key` (offered by "Download key" until
 * the page is closed), and kept in IndexedDB only as a non-extractable key.
 */
async function keyFor(user) {
  const have = await loadKey(user);
  if (have) return have;
  if (!crypto.subtle) throw new Refusal('This page needs a secure context (https or localhost) for its keys');
  let pair;
  try {
    pair = await crypto.subtle.generateKey({ name: 'Ed25519' }, true, ['sign', 'verify']);
  } catch (e) {
    throw new Refusal(`This browser cannot make Ed25519 keys (${e.message})`);
  }
  const publicKey = new Uint8Array(await crypto.subtle.exportKey('raw', pair.publicKey));
  const { seed } = parsePkcs8(new Uint8Array(await crypto.subtle.exportKey('pkcs8', pair.privateKey)));
  const privateKey = await crypto.subtle.importKey(
    'pkcs8',
    concat(PKCS8_V1_PREFIX, seed),
    { name: 'Ed25519' },
    false,
    ['sign'],
  );
  const rec = await storeKey(user, { privateKey, publicKey, source: 'generated' }, false);
  if (rec.privateKey === privateKey) {
    keyFiles.set(user, concat(PKCS8_RING_PREFIX, seed, PKCS8_RING_PUBLIC, publicKey));
    offerKeyFile(user);
  }
  return rec;
}

/** Shows "Download key" for `user` if this page made their key. */
function offerKeyFile(user) {
  const file = keyFiles.get(user);
  ui.keyDownloadRow.hidden = !file;
  if (!file) return;
  if (ui.keyDownload.href) URL.revokeObjectURL(ui.keyDownload.href);
  ui.keyDownload.href = URL.createObjectURL(new Blob([file], { type: 'application/octet-stream' }));
  ui.keyDownload.download = `user-${user}.key`;
  ui.keyDownload.textContent = `Download user-${user}.key`;
}

// PKCS#8 of an Ed25519 key. v1 (RFC 8410): the seed only. v2 as Rust's ring writes it
// (83 bytes): the seed, then the public key as `[1] IMPLICIT BIT STRING` (`81 21 00`).
// Also v2 with the public key wrapped explicitly (`a1 23 03 21 00`, 85 bytes).
const PKCS8_V1_PREFIX = fromHex('302e020100300506032b657004220420');
const PKCS8_RING_PREFIX = fromHex('3051020101300506032b657004220420');
const PKCS8_RING_PUBLIC = fromHex('812100');
const PKCS8_V2_PREFIX = fromHex('3053020101300506032b657004220420');
const PKCS8_V2_PUBLIC = fromHex('a123032100');

function parsePkcs8(bytes) {
  const has = (at, part) => sameBytes(bytes.subarray(at, at + part.length), part);
  if (bytes.length === 48 && has(0, PKCS8_V1_PREFIX)) {
    return { seed: bytes.slice(16, 48), publicKey: null };
  }
  if (bytes.length === 83 && has(0, PKCS8_RING_PREFIX) && has(48, PKCS8_RING_PUBLIC)) {
    return { seed: bytes.slice(16, 48), publicKey: bytes.slice(51, 83) };
  }
  if (bytes.length === 85 && has(0, PKCS8_V2_PREFIX) && has(48, PKCS8_V2_PUBLIC)) {
    return { seed: bytes.slice(16, 48), publicKey: bytes.slice(53, 85) };
  }
  throw new Refusal('This file is not an Ed25519 key as the terminal client writes it (user-<id>.key)');
}

/** The key of a `user-<id>.key` file, imported non-extractable. */
async function importKeyFile(bytes) {
  if (!crypto.subtle) throw new Refusal('This page needs a secure context (https or localhost) for its keys');
  const { seed, publicKey: filePublic } = parsePkcs8(bytes);
  const v1 = concat(PKCS8_V1_PREFIX, seed);
  // The public key, from the private one (a v1 file does not hold it; a v2 file's must
  // agree with it).
  let publicKey = filePublic;
  try {
    const probe = await crypto.subtle.importKey('pkcs8', v1, { name: 'Ed25519' }, true, ['sign']);
    const jwk = await crypto.subtle.exportKey('jwk', probe);
    if (jwk.x) publicKey = base64urlDecode(jwk.x);
  } catch (e) {
    if (!filePublic) throw new Refusal(`This browser cannot read the key (${e.message})`);
  }
  if (!publicKey || publicKey.length !== 32) throw new Refusal('The key file holds no usable public key');
  if (filePublic && !sameBytes(filePublic, publicKey)) {
    throw new Refusal("The key file's public key does not belong to its private key");
  }
  let privateKey;
  try {
    privateKey = await crypto.subtle.importKey('pkcs8', bytes, { name: 'Ed25519' }, false, ['sign']);
  } catch {
    try {
      privateKey = await crypto.subtle.importKey('pkcs8', v1, { name: 'Ed25519' }, false, ['sign']);
    } catch (e) {
      throw new Refusal(`This browser cannot import the key (${e.message})`);
    }
  }
  return { privateKey, publicKey, source: 'imported' };
}

// ---------------------------------------------------------------------------------
// The connection

const session = {
  user: null, // the user logged in (or logging in), or null
  gen: 0, // bumped whenever the current connection is given up; older work stops
  wt: null,
  cluster: null,
  where: '', // the server's url and certificate hashes, as the coordinator named them
  watch: { since: 0, wait: ACK_SUSPECT_MS, probing: false },
  timeline: null, // the timeline stream's writer while live
  live: false,
  liveSince: 0,
  failStart: null, // when the current run of failures began
  delay: BACKOFF_START_MS,
  timer: null,
  pending: [], // posts sent (or to send) and not yet acknowledged: { nonce, text }
  acked: [], // texts of acknowledged posts, in order
  pos: null, // the timeline position reached: { log, seq, ts_us }
  shownIds: new Set(), // `${author}:${nonce}` of every entry shown
};

function checkGen(gen) {
  if (gen !== session.gen) throw new Stale('replaced');
}

function closeTransport(wt) {
  if (!wt) return;
  try {
    wt.close({ closeCode: 0, reason: '' });
  } catch {
    // already closed or never opened
  }
}

/** Ends the current connection (if any) so that nothing of it acts any more. */
function dropConnection() {
  session.gen += 1;
  session.live = false;
  session.timeline = null;
  clearTimeout(session.timer);
  session.timer = null;
  const wt = session.wt;
  session.wt = null;
  closeTransport(wt);
}

/** Where `user`'s server is: `{ cluster, url, hashes }`. */
async function assign(user) {
  let res;
  try {
    res = await withTimeout(fetch(`/assign/${user}`, { cache: 'no-store' }), CONNECT_TIMEOUT_MS, 'the coordinator');
  } catch (e) {
    throw new Error(`cannot reach the coordinator (${e.message})`);
  }
  let body = null;
  try {
    body = await res.json();
  } catch {
    // no JSON: the status says enough
  }
  if (!res.ok) {
    const words = body && typeof body.error === 'string' ? body.error : `the coordinator answered ${res.status}`;
    if (res.status >= 400 && res.status < 500) throw new Refusal(words);
    throw new Error(words);
  }
  if (!body || typeof body.url !== 'string' || !Array.isArray(body.hashes)) {
    throw new Error('the coordinator gave a malformed answer');
  }
  return body;
}

function serverOf(where) {
  return `${where.url} ${where.hashes.join(',')}`;
}

/** One command on its own stream: send `req`, read the reply. */
async function command(wt, req) {
  const stream = await withTimeout(wt.createBidirectionalStream(), COMMAND_TIMEOUT_MS, 'opening a stream');
  const writer = stream.writable.getWriter();
  const reader = stream.readable.getReader();
  try {
    await writer.write(frame(encodeClientRequest(req)));
    // The server may answer and stop reading before our end of the stream arrives
    // (STOP_SENDING): the request was read whole, so only the reply matters.
    writer.close().catch(() => {});
    const body = await withTimeout(new FrameReader(reader).next(), COMMAND_TIMEOUT_MS, 'the server');
    if (body === null) throw new Error('the server closed the stream without a reply');
    return decodeClientReply(body);
  } finally {
    reader.cancel().catch(() => {});
  }
}

/** A reply that refuses a login or the timeline: a Refusal, or an Error worth a retry. */
function failureOf(reply, what) {
  const err = variantName(reply) === 'Failed' ? reply.Failed : null;
  const name = variantName(err);
  if (err === null) return new Error(`unexpected answer to ${what}`);
  if (name === 'NotActive') return new Error('the server is not the active one');
  if (name === 'Storage' || name === 'RateLimited') return new Error(failureWords(err));
  return new Refusal(failureWords(err));
}

/** Assign, connect, log in, open the timeline: the whole of one connection attempt. */
async function connect(gen) {
  const user = session.user;
  const where = await assign(user);
  checkGen(gen);
  const hashes = where.hashes.map((h) => ({ algorithm: 'sha-256', value: fromHex(h) }));
  if (typeof WebTransport === 'undefined') throw new Refusal('This browser has no WebTransport');
  const wt = hashes.length ? new WebTransport(where.url, { serverCertificateHashes: hashes }) : new WebTransport(where.url);
  session.wt = wt;
  session.cluster = where.cluster;
  session.where = serverOf(where);
  wt.ready.catch(() => {});
  wt.closed.then(
    () => lost(gen, 'the server closed the connection'),
    () => lost(gen, 'the connection was lost'),
  );
  // While reconnecting, no handshake outlasts the time left before giving up.
  const left = session.failStart === null ? HANDSHAKE_TIMEOUT_MS : session.failStart + GIVE_UP_MS - Date.now();
  await withTimeout(wt.ready, Math.max(2_000, Math.min(HANDSHAKE_TIMEOUT_MS, left)), 'the server');
  checkGen(gen);

  const key = await keyFor(user);
  checkGen(gen);
  const challenge = await command(wt, 'Challenge');
  checkGen(gen);
  if (variantName(challenge) !== 'Challenge') throw failureOf(challenge, 'the challenge');
  const signature = new Uint8Array(
    await crypto.subtle.sign('Ed25519', key.privateKey, loginMessage(user, challenge.Challenge)),
  );
  const login = await command(wt, { Login: { user, proof: { key: key.publicKey, signature } } });
  checkGen(gen);
  if (login !== 'Ok') throw failureOf(login, 'the login');

  await openTimeline(gen, wt, user);
}

async function openTimeline(gen, wt, user) {
  const stream = await withTimeout(wt.createBidirectionalStream(), COMMAND_TIMEOUT_MS, 'opening the timeline');
  checkGen(gen);
  const writer = stream.writable.getWriter();
  const reader = new FrameReader(stream.readable.getReader());
  await writer.write(frame(encodeClientRequest({ Timeline: { user, since: session.pos } })));
  const body = await withTimeout(reader.next(), COMMAND_TIMEOUT_MS, 'the timeline');
  checkGen(gen);
  if (body === null) throw new Error('the server closed the timeline');
  const reply = decodeClientReply(body);
  if (reply !== 'Ok') throw failureOf(reply, 'the timeline');

  session.timeline = writer;
  session.live = true;
  session.liveSince = Date.now();
  session.failStart = null;
  session.watch = { since: Date.now(), wait: ACK_SUSPECT_MS, probing: false };
  ui.retryRow.hidden = true;
  setStatus('connected', `connected as user ${user}${session.cluster ? ` (cluster ${session.cluster})` : ''}`);
  // What was posted and not acknowledged, again with the same nonces, in order: the
  // server stores each post once.
  for (const p of session.pending) sendPost(gen, p);
  readTimeline(gen, reader);
}

function sendPost(gen, p) {
  const writer = session.timeline;
  if (!writer || gen !== session.gen) return;
  p.sentAt = Date.now();
  writer.write(frame(encodeTimelineUp({ Post: { nonce: p.nonce, text: p.text } })))
    .catch(() => lost(gen, 'the timeline stream broke'));
}

async function readTimeline(gen, reader) {
  try {
    for (;;) {
      const body = await reader.next();
      if (gen !== session.gen) return;
      if (body === null) {
        lost(gen, 'the server closed the timeline');
        return;
      }
      const msg = decodeTimelineDown(body);
      if (msg === 'NotActive') {
        lost(gen, 'the server is no longer the active one');
        return;
      }
      if (msg === 'Reopen') {
        lost(gen, 'the server asked to reopen the timeline');
        return;
      }
      onTimeline(msg);
    }
  } catch (e) {
    lost(gen, `the timeline stream broke (${e.message})`);
  }
}

function onTimeline(msg) {
  switch (variantName(msg)) {
    case 'Position': {
      const p = msg.Position;
      // Keep what this page reached if it is further along the same journal.
      const ours = session.pos;
      if (!ours || ours.log !== p.log) {
        session.pos = { log: p.log, seq: p.seq, ts_us: p.ts_us };
      } else if (ours.seq < p.seq) {
        session.pos = { log: p.log, seq: p.seq, ts_us: p.ts_us > ours.ts_us ? p.ts_us : ours.ts_us };
      }
      break;
    }
    case 'Entry': {
      const { post, seq } = msg.Entry;
      const pos = session.pos;
      const id = `${post.id.author}:${post.id.nonce}`;
      const seen = (pos && seq <= pos.seq) || session.shownIds.has(id);
      if (pos && seq > pos.seq) {
        pos.seq = seq;
        pos.ts_us = post.ts_us;
      }
      if (!seen) {
        session.shownIds.add(id);
        if (session.shownIds.size > SHOWN_IDS_KEEP) {
          session.shownIds.delete(session.shownIds.values().next().value);
        }
        showEntry(post);
      }
      break;
    }
    case 'Ack': {
      const i = session.pending.findIndex((p) => p.nonce === msg.Ack.nonce);
      if (i >= 0) {
        const [p] = session.pending.splice(i, 1);
        session.acked.push(p.text);
        session.watch.since = Date.now();
        session.watch.wait = ACK_SUSPECT_MS;
      }
      break;
    }
    case 'Refused': {
      const { nonce, reason } = msg.Refused;
      const i = session.pending.findIndex((p) => p.nonce === nonce);
      if (i >= 0) session.pending.splice(i, 1);
      setMessage(refusalWords(reason), 'error');
      break;
    }
    default:
      console.warn('unknown timeline message', msg);
  }
}

function entryLine(post) {
  const when = new Date(Number(post.ts_us / 1000n)).toLocaleString();
  return `${post.id.author} (${when}) >> ${escapeControls(post.text)}`;
}

function showEntry(post) {
  const li = document.createElement('li');
  li.textContent = entryLine(post);
  ui.timeline.prepend(li);
  while (ui.timeline.childElementCount > TIMELINE_KEEP) ui.timeline.lastElementChild.remove();
}

/**
 * Posts wait for their acknowledgement: ask the coordinator whether the user's server
 * moved (a server that died says nothing), and reconnect if it names another.
 */
async function watchAcks() {
  const w = session.watch;
  const now = Date.now();
  if (!session.live || w.probing || now - w.since <= w.wait) return;
  const sent = session.pending.filter((p) => p.sentAt !== undefined).map((p) => p.sentAt);
  if (!sent.length || now - Math.min(...sent) <= ACK_SUSPECT_MS) return;
  const gen = session.gen;
  w.probing = true;
  try {
    const where = await assign(session.user);
    if (gen !== session.gen) return;
    if (serverOf(where) !== session.where) {
      lost(gen, 'posts unacknowledged, and the coordinator names another server');
      return;
    }
  } catch (e) {
    console.warn(`asking the coordinator: ${e.message}`);
  } finally {
    w.probing = false;
  }
  w.since = Date.now();
  w.wait = Math.min(w.wait * 2, ACK_PROBE_MAX_MS);
}

/** The connection of generation `gen` failed: try again, unless it was replaced. */
function lost(gen, reason) {
  if (gen !== session.gen || session.user === null) return;
  const wasLive = session.live;
  dropConnection();
  if (wasLive && Date.now() - session.liveSince >= STABLE_MS) session.delay = BACKOFF_START_MS;
  retryLater(reason);
}

function retryLater(reason) {
  const now = Date.now();
  if (session.failStart === null) session.failStart = now;
  if (now - session.failStart >= GIVE_UP_MS) {
    giveUp(reason);
    return;
  }
  setStatus('reconnecting', `reconnecting… (${reason})`);
  const gen = session.gen;
  const delay = session.delay;
  session.delay = Math.min(session.delay * 2, BACKOFF_MAX_MS);
  session.timer = setTimeout(() => attempt(gen), delay);
}

async function attempt(gen) {
  if (gen !== session.gen) return;
  try {
    await connect(gen);
  } catch (e) {
    if (e instanceof Stale || gen !== session.gen) return;
    dropConnection();
    if (e instanceof Refusal) {
      setMessage(e.message, 'error');
      giveUp(e.message);
      return;
    }
    console.warn(`connecting: ${e.message}`);
    retryLater(e.message);
  }
}

function giveUp(reason) {
  dropConnection();
  setStatus('gave-up', `gave up: ${reason}`);
  ui.retryRow.hidden = false;
}

/** The login button: start (or restart) a session as `user`. */
async function login(user) {
  const sameUser = session.user === user;
  dropConnection();
  if (!sameUser) {
    session.pending = [];
    session.acked = [];
    session.pos = null;
    session.shownIds = new Set();
    ui.timeline.replaceChildren();
    ui.users.replaceChildren();
    ui.followers.replaceChildren();
  }
  session.user = user;
  session.failStart = null;
  session.delay = BACKOFF_START_MS;
  ui.retryRow.hidden = true;
  setStatus('connecting', `connecting as user ${user}…`);
  const gen = session.gen;
  try {
    await connect(gen);
    setMessage(SUCCESS);
    list(true);
  } catch (e) {
    if (e instanceof Stale || gen !== session.gen) return;
    dropConnection();
    if (e instanceof Refusal) {
      session.user = null;
      setStatus('idle', 'not connected');
      setMessage(e.message, 'error');
      return;
    }
    console.warn(`connecting: ${e.message}`);
    retryLater(e.message);
  }
}

// ---------------------------------------------------------------------------------
// Commands

/** Runs `req` on the live connection; the reply, or null (the message says why). */
async function run(req, quiet = false) {
  if (session.user === null) {
    if (!quiet) setMessage('Log in first', 'error');
    return null;
  }
  if (!session.live || !session.wt) {
    if (!quiet) setMessage('Not connected at the moment: try again once the status says connected', 'error');
    return null;
  }
  const gen = session.gen;
  try {
    const reply = await command(session.wt, req);
    if (!quiet) setMessage(replyWords(reply), variantName(reply) === 'Failed' ? 'error' : 'info');
    if (variantName(reply) === 'Failed' && variantName(reply.Failed) === 'NotActive') {
      lost(gen, 'the server is no longer the active one');
    }
    return reply;
  } catch (e) {
    console.warn(`command: ${e.message}`);
    if (!quiet) setMessage(UNKNOWN_FAILURE, 'error');
    return null;
  }
}

function idItem(id, withButton) {
  const li = document.createElement('li');
  if (withButton) {
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = String(id);
    b.setAttribute('aria-label', `Follow user ${id}`);
    b.addEventListener('click', () => followUser(id, true));
    li.className = 'has-button';
    li.append(b);
  } else {
    li.textContent = String(id);
  }
  return li;
}

async function list(quiet = false) {
  const user = session.user;
  const reply = await run({ List: { user } }, quiet);
  if (reply && variantName(reply) === 'List' && user === session.user) {
    ui.users.replaceChildren(...reply.List.all_users.map((id) => idItem(id, true)));
    ui.followers.replaceChildren(...reply.List.followers.map((id) => idItem(id, false)));
  }
}

async function followUser(target, follow) {
  const user = session.user;
  const req = follow ? { Follow: { user, target } } : { Unfollow: { user, target } };
  const reply = await run(req);
  if (reply !== null) await list(true);
}

function followFromInput(follow) {
  const target = parseUserId(ui.followId.value);
  if (target === null) {
    setMessage(INVALID_USER, 'error');
    return;
  }
  followUser(target, follow);
}

// ---------------------------------------------------------------------------------
// Posting

function postBytes() {
  return utf8.encode(ui.postText.value).length;
}

function updateBytes() {
  const n = postBytes();
  ui.postBytes.textContent = `${n} / ${MAX_POST_BYTES} bytes`;
  ui.postBytes.dataset.over = String(n > MAX_POST_BYTES);
  ui.post.disabled = n > MAX_POST_BYTES;
}

function submitPost() {
  const text = ui.postText.value;
  if (session.user === null) {
    setMessage('Log in first', 'error');
    return;
  }
  if (text.trim() === '') {
    setMessage('Type a post first', 'error');
    return;
  }
  const n = utf8.encode(text).length;
  if (n > MAX_POST_BYTES) {
    setMessage(`A post holds at most ${MAX_POST_BYTES} bytes; this one has ${n}`, 'error');
    return;
  }
  const cp = firstControl(text);
  if (cp !== null) {
    setMessage(`A post may not hold control characters (this one holds U+${hex4(cp)}); nothing was sent`, 'error');
    return;
  }
  const p = { nonce: randomNonce(), text };
  session.pending.push(p);
  sendPost(session.gen, p);
  ui.postText.value = '';
  updateBytes();
}

// ---------------------------------------------------------------------------------
// Importing a key file

async function onKeyFile() {
  const file = ui.keyFile.files && ui.keyFile.files[0];
  if (!file) return;
  try {
    const fromName = /user-([0-9]+)\.key$/.exec(file.name);
    const named = fromName ? parseUserId(fromName[1]) : null;
    const typed = ui.userId.value.trim() === '' ? null : parseUserId(ui.userId.value);
    if (ui.userId.value.trim() !== '' && typed === null) throw new Refusal(INVALID_USER);
    if (typed !== null && named !== null && typed !== named) {
      throw new Refusal(`This file is the key of user ${named}, not of user ${typed}`);
    }
    const user = typed ?? named;
    if (user === null) throw new Refusal('Type the user id first, then choose the key file');
    if (file.size > 4096) throw new Refusal('This file is too large to be a key');
    const bytes = new Uint8Array(await file.arrayBuffer());
    const rec = await importKeyFile(bytes);
    await storeKey(user, rec, true);
    ui.userId.value = String(user);
    setMessage(`Key imported for user ${user}: log in to use it`);
  } catch (e) {
    setMessage(e instanceof Refusal ? e.message : `Cannot import the key: ${e.message}`, 'error');
  } finally {
    ui.keyFile.value = '';
  }
}

// ---------------------------------------------------------------------------------
// Wiring

function onLoginClick() {
  const user = parseUserId(ui.userId.value);
  if (user === null) {
    setMessage(INVALID_USER, 'error');
    return;
  }
  login(user);
}

function onEnter(input, action) {
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      action();
    }
  });
}

ui.login.addEventListener('click', onLoginClick);
onEnter(ui.userId, onLoginClick);
ui.keyFile.addEventListener('change', onKeyFile);
ui.retry.addEventListener('click', () => {
  if (session.user === null) return;
  dropConnection();
  session.failStart = null;
  session.delay = BACKOFF_START_MS;
  ui.retryRow.hidden = true;
  setStatus('reconnecting', 'reconnecting…');
  attempt(session.gen);
});
ui.list.addEventListener('click', () => list(false));
ui.follow.addEventListener('click', () => followFromInput(true));
ui.unfollow.addEventListener('click', () => followFromInput(false));
onEnter(ui.followId, () => followFromInput(true));
ui.post.addEventListener('click', submitPost);
onEnter(ui.postText, () => {
  if (!ui.post.disabled) submitPost();
  else setMessage(`A post holds at most ${MAX_POST_BYTES} bytes; this one has ${postBytes()}`, 'error');
});
ui.postText.addEventListener('input', updateBytes);

updateBytes();
setStatus('idle', 'not connected');
setInterval(watchAcks, 100);
if (!window.isSecureContext) {
  setMessage('This page must be opened over https (or from localhost) to log in', 'error');
} else if (typeof WebTransport === 'undefined') {
  setMessage('This browser has no WebTransport: use a recent Chromium, Chrome, Edge or Firefox', 'error');
}

// For tests.
window.tsn = Object.freeze({
  pending: () => session.pending.length,
  acked: () => session.acked.slice(),
  state: () => ui.status.dataset.state,
  user: () => session.user,
  // The key file this page made for `user` (hex), or null.
  keyFile: (user) => (keyFiles.has(user) ? toHex(keyFiles.get(user)) : null),
});
