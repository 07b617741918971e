// The TSN client wire protocol in JavaScript: the same bytes as the Rust crate
// `tsn_protocol` (postcard inside a 4-byte big-endian length prefix).
//
// A frame body is postcard of the tuple `(PROTOCOL_VERSION: u16, message)`. The
// messages are described below as schemas, and one encoder and one decoder walk them.
//
// JS values mirror serde's externally tagged JSON: a unit variant is its name as a
// string ("Challenge"), a struct variant `{ Login: { user, proof } }`, a newtype variant
// `{ Failed: "NoSuchUser" }`. u16/u32 are Numbers; u64/i64 are BigInts (a safe-integer
// Number is accepted when encoding); Vec<u8> is a Uint8Array; Option is null or the
// value.
//
// No DOM here: this module runs as it is in browsers and in Node.

export const PROTOCOL_VERSION = 1;
/** Largest frame body either side accepts (`tsn_protocol::MAX_FRAME_LEN`). */
export const MAX_FRAME_LEN = 1 << 20;

// ---------------------------------------------------------------------------------
// Schemas

const U16 = 'u16';
const U32 = 'u32';
const U64 = 'u64';
const USIZE = 'u64'; // postcard writes usize as a u64 varint
const I64 = 'i64';
const STRING = 'string';
const BYTES = 'bytes'; // Vec<u8>: a sequence of u8, each one raw byte

const vec = (item) => ({ vec: item });
const option = (inner) => ({ option: inner });
const struct = (fields) => ({ struct: fields });
// Variants: [name] for a unit variant, [name, struct([...])] for a struct variant,
// [name, { newtype: T }] for a newtype variant.
const enm = (variants) => ({ enum: variants });
const newtype = (t) => ({ newtype: t });

const USER_ID = U32;
const POST_ID = struct([['author', USER_ID], ['nonce', U64]]);
const POST = struct([['id', POST_ID], ['ts_us', I64], ['text', STRING]]);
const LOGIN_PROOF = struct([['key', BYTES], ['signature', BYTES]]);
const TIMELINE_POS = struct([['log', U64], ['seq', U64], ['ts_us', I64]]);

const COMMAND_ERROR = enm([
  ['AlreadyExists'],
  ['NoSuchUser'],
  ['InvalidUser'],
  ['InvalidCommand'],
  ['NotActive'],
  ['PostTooLong', struct([['len', USIZE], ['max', USIZE]])],
  ['Storage', newtype(STRING)],
  ['BadProof'],
  ['KeyMismatch', struct([['user', USER_ID]])],
  ['RateLimited', struct([['per_second', U32]])],
  ['ControlChar', struct([['code', U32]])],
]);

const CLIENT_REQUEST = enm([
  ['Challenge'],
  ['Login', struct([['user', USER_ID], ['proof', option(LOGIN_PROOF)]])],
  ['Follow', struct([['user', USER_ID], ['target', USER_ID]])],
  ['Unfollow', struct([['user', USER_ID], ['target', USER_ID]])],
  ['List', struct([['user', USER_ID]])],
  ['Timeline', struct([['user', USER_ID], ['since', option(TIMELINE_POS)]])],
]);

const CLIENT_REPLY = enm([
  ['Ok'],
  ['Challenge', newtype(BYTES)],
  ['List', struct([['all_users', vec(USER_ID)], ['followers', vec(USER_ID)]])],
  ['Failed', newtype(COMMAND_ERROR)],
]);

const TIMELINE_UP = enm([
  ['Post', struct([['nonce', U64], ['text', STRING]])],
]);

const TIMELINE_DOWN = enm([
  ['Entry', struct([['post', POST], ['seq', U64]])],
  ['Position', newtype(TIMELINE_POS)],
  ['Ack', struct([['nonce', U64]])],
  ['Refused', struct([['nonce', U64], ['reason', COMMAND_ERROR]])],
  ['NotActive'],
  ['Reopen'],
]);

export const SCHEMAS = Object.freeze({
  ClientRequest: CLIENT_REQUEST,
  ClientReply: CLIENT_REPLY,
  TimelineUp: TIMELINE_UP,
  TimelineDown: TIMELINE_DOWN,
  CommandError: COMMAND_ERROR,
});

// ---------------------------------------------------------------------------------
// Encoding

const MAX = { u16: 0xffffn, u32: 0xffffffffn, u64: 0xffffffffffffffffn };
const I64_MIN = -(1n << 63n);
const I64_MAX = (1n << 63n) - 1n;
const MASK64 = (1n << 64n) - 1n;

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

class Writer {
  constructor() {
    this.buf = new Uint8Array(64);
    this.len = 0;
  }

  reserve(n) {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
  }

  byte(b) {
    this.reserve(1);
    this.buf[this.len++] = b;
  }

  bytes(u8) {
    this.reserve(u8.length);
    this.buf.set(u8, this.len);
    this.len += u8.length;
  }

  /** Unsigned LEB128 of a non-negative BigInt. */
  varint(v) {
    do {
      let b = Number(v & 0x7fn);
      v >>= 7n;
      if (v !== 0n) b |= 0x80;
      this.byte(b);
    } while (v !== 0n);
  }

  /** Unsigned LEB128 of a small non-negative Number (lengths, u16, u32). */
  varintNum(v) {
    while (v > 0x7f) {
      this.byte((v & 0x7f) | 0x80);
      v = Math.floor(v / 128);
    }
    this.byte(v);
  }

  finish() {
    return this.buf.slice(0, this.len);
  }
}

function fail(path, what) {
  throw new TypeError(`cannot encode ${path || 'value'}: ${what}`);
}

function toBigInt(value, path, kind) {
  if (typeof value === 'bigint') return value;
  if (typeof value === 'number' && Number.isSafeInteger(value)) return BigInt(value);
  return fail(path, `${kind} must be a BigInt or a safe integer, got ${describe(value)}`);
}

function describe(value) {
  if (value === null) return 'null';
  if (value instanceof Uint8Array) return 'Uint8Array';
  if (Array.isArray(value)) return 'array';
  return typeof value;
}

function encodeValue(w, schema, value, path) {
  if (typeof schema === 'string') {
    switch (schema) {
      case U16:
      case U32: {
        if (typeof value !== 'number' || !Number.isInteger(value) || value < 0
            || value > Number(MAX[schema])) {
          fail(path, `${schema} must be an integer Number in range, got ${describe(value)} ${String(value)}`);
        }
        w.varintNum(value);
        return;
      }
      case U64: {
        const v = toBigInt(value, path, 'u64');
        if (v < 0n || v > MAX.u64) fail(path, `u64 out of range: ${v}`);
        w.varint(v);
        return;
      }
      case I64: {
        const v = toBigInt(value, path, 'i64');
        if (v < I64_MIN || v > I64_MAX) fail(path, `i64 out of range: ${v}`);
        w.varint(((v << 1n) ^ (v >> 63n)) & MASK64); // zigzag
        return;
      }
      case STRING: {
        if (typeof value !== 'string') fail(path, `string expected, got ${describe(value)}`);
        const bytes = utf8Encoder.encode(value);
        w.varintNum(bytes.length);
        w.bytes(bytes);
        return;
      }
      case BYTES: {
        if (!(value instanceof Uint8Array)) fail(path, `Uint8Array expected, got ${describe(value)}`);
        w.varintNum(value.length);
        w.bytes(value);
        return;
      }
      case 'bool': {
        if (typeof value !== 'boolean') fail(path, `boolean expected, got ${describe(value)}`);
        w.byte(value ? 1 : 0);
        return;
      }
      default:
        throw new Error(`unknown schema ${schema}`);
    }
  }
  if (schema.vec !== undefined) {
    if (!Array.isArray(value)) fail(path, `array expected, got ${describe(value)}`);
    w.varintNum(value.length);
    value.forEach((item, i) => encodeValue(w, schema.vec, item, `${path}[${i}]`));
    return;
  }
  if (schema.option !== undefined) {
    if (value === null || value === undefined) {
      w.byte(0);
    } else {
      w.byte(1);
      encodeValue(w, schema.option, value, path);
    }
    return;
  }
  if (schema.struct !== undefined) {
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      fail(path, `object expected, got ${describe(value)}`);
    }
    for (const [name, type] of schema.struct) {
      if (!(name in value)) fail(path, `missing field ${name}`);
      encodeValue(w, type, value[name], path ? `${path}.${name}` : name);
    }
    return;
  }
  if (schema.enum !== undefined) {
    let name;
    let inner;
    if (typeof value === 'string') {
      name = value;
    } else if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
      const keys = Object.keys(value);
      if (keys.length !== 1) fail(path, `a variant object has exactly one key, got ${keys.length}`);
      [name] = keys;
      inner = value[name];
    } else {
      fail(path, `variant expected, got ${describe(value)}`);
    }
    const index = schema.enum.findIndex(([n]) => n === name);
    if (index < 0) fail(path, `unknown variant ${name}`);
    const [, body] = schema.enum[index];
    const where = path ? `${path}.${name}` : name;
    if (body === undefined) {
      if (typeof value !== 'string') fail(path, `${name} is a unit variant: write it as "${name}"`);
      w.varintNum(index);
      return;
    }
    if (typeof value === 'string') fail(path, `${name} carries data: write it as { ${name}: ... }`);
    w.varintNum(index);
    encodeValue(w, body.newtype !== undefined ? body.newtype : body, inner, where);
    return;
  }
  throw new Error('bad schema');
}

function encodeBody(schema, msg) {
  const w = new Writer();
  w.varintNum(PROTOCOL_VERSION);
  encodeValue(w, schema, msg, '');
  return w.finish();
}

// ---------------------------------------------------------------------------------
// Decoding

export class DecodeError extends Error {
  constructor(message) {
    super(message);
    this.name = 'DecodeError';
  }
}

class Reader {
  constructor(bytes) {
    if (!(bytes instanceof Uint8Array)) throw new TypeError('decode takes a Uint8Array');
    this.bytes = bytes;
    this.pos = 0;
  }

  byte() {
    if (this.pos >= this.bytes.length) throw new DecodeError('unexpected end of message');
    return this.bytes[this.pos++];
  }

  take(n) {
    if (n > this.bytes.length - this.pos) throw new DecodeError('unexpected end of message');
    const out = this.bytes.slice(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  /**
   * An unsigned LEB128 varint of a type of `bits` bits, as postcard reads it: at most
   * ceil(bits / 7) bytes, and the value must fit.
   */
  varint(bits) {
    const maxBytes = Math.ceil(bits / 7);
    let v = 0n;
    for (let i = 0; i < maxBytes; i++) {
      const b = this.byte();
      v |= BigInt(b & 0x7f) << BigInt(7 * i);
      if ((b & 0x80) === 0) {
        if (v >> BigInt(bits) !== 0n) throw new DecodeError(`varint overflows u${bits}`);
        return v;
      }
    }
    throw new DecodeError(`varint longer than a u${bits}`);
  }

  /** A length (usize) as a Number, checked against what is left of the message. */
  length(itemMin) {
    const n = this.varint(64);
    if (n > BigInt(this.bytes.length - this.pos) / BigInt(itemMin || 1)) {
      throw new DecodeError('length runs past the end of the message');
    }
    return Number(n);
  }
}

function minSize(schema) {
  if (typeof schema === 'string') return 1;
  if (schema.struct !== undefined) return schema.struct.reduce((s, [, t]) => s + minSize(t), 0) || 1;
  return 1;
}

function decodeValue(r, schema) {
  if (typeof schema === 'string') {
    switch (schema) {
      case U16: return Number(r.varint(16));
      case U32: return Number(r.varint(32));
      case U64: return r.varint(64);
      case I64: {
        const z = r.varint(64);
        return (z >> 1n) ^ -(z & 1n); // zigzag back
      }
      case STRING: {
        const n = r.length(1);
        try {
          return utf8Decoder.decode(r.take(n));
        } catch {
          throw new DecodeError('string is not valid UTF-8');
        }
      }
      case BYTES: return r.take(r.length(1));
      case 'bool': {
        const b = r.byte();
        if (b > 1) throw new DecodeError(`bad bool ${b}`);
        return b === 1;
      }
      default:
        throw new Error(`unknown schema ${schema}`);
    }
  }
  if (schema.vec !== undefined) {
    const n = r.length(minSize(schema.vec));
    const out = [];
    for (let i = 0; i < n; i++) out.push(decodeValue(r, schema.vec));
    return out;
  }
  if (schema.option !== undefined) {
    const tag = r.byte();
    if (tag === 0) return null;
    if (tag === 1) return decodeValue(r, schema.option);
    throw new DecodeError(`bad option tag ${tag}`);
  }
  if (schema.struct !== undefined) {
    const out = {};
    for (const [name, type] of schema.struct) out[name] = decodeValue(r, type);
    return out;
  }
  if (schema.enum !== undefined) {
    const index = Number(r.varint(32));
    if (index >= schema.enum.length) throw new DecodeError(`unknown variant index ${index}`);
    const [name, body] = schema.enum[index];
    if (body === undefined) return name;
    return { [name]: decodeValue(r, body.newtype !== undefined ? body.newtype : body) };
  }
  throw new Error('bad schema');
}

function decodeBody(schema, body) {
  const r = new Reader(body);
  const version = Number(r.varint(16));
  if (version !== PROTOCOL_VERSION) {
    throw new DecodeError(`protocol version ${version}, ours is ${PROTOCOL_VERSION}`);
  }
  const msg = decodeValue(r, schema);
  if (r.pos !== body.length) {
    throw new DecodeError(`${body.length - r.pos} trailing bytes after the message`);
  }
  return msg;
}

// ---------------------------------------------------------------------------------
// The public functions: each encode returns a frame body, each decode takes one.

export const encodeClientRequest = (msg) => encodeBody(CLIENT_REQUEST, msg);
export const decodeClientRequest = (body) => decodeBody(CLIENT_REQUEST, body);
export const encodeClientReply = (msg) => encodeBody(CLIENT_REPLY, msg);
export const decodeClientReply = (body) => decodeBody(CLIENT_REPLY, body);
export const encodeTimelineUp = (msg) => encodeBody(TIMELINE_UP, msg);
export const decodeTimelineUp = (body) => decodeBody(TIMELINE_UP, body);
export const encodeTimelineDown = (msg) => encodeBody(TIMELINE_DOWN, msg);
export const decodeTimelineDown = (body) => decodeBody(TIMELINE_DOWN, body);

// ---------------------------------------------------------------------------------
// Framing

export class FrameError extends Error {
  constructor(message) {
    super(message);
    this.name = 'FrameError';
  }
}

/** The frame of `body`: its length as 4 bytes big-endian, then the body. */
export function frame(body) {
  if (!(body instanceof Uint8Array)) throw new TypeError('frame takes a Uint8Array');
  if (body.length > MAX_FRAME_LEN) {
    throw new FrameError(`frame of ${body.length} bytes is longer than the maximum of ${MAX_FRAME_LEN}`);
  }
  const out = new Uint8Array(4 + body.length);
  new DataView(out.buffer).setUint32(0, body.length, false);
  out.set(body, 4);
  return out;
}

/**
 * Whole frame bodies out of a `ReadableStreamDefaultReader` of Uint8Array chunks.
 * `await next()` gives the next body, or null where the stream ends cleanly between
 * frames; it throws a FrameError on a frame cut short or longer than MAX_FRAME_LEN.
 */
export class FrameReader {
  constructor(reader) {
    this.reader = reader;
    this.chunks = [];
    this.buffered = 0;
    this.done = false;
  }

  /** Reads until `n` bytes are buffered; false if the stream ended first. */
  async fill(n) {
    while (this.buffered < n) {
      if (this.done) return false;
      const { value, done } = await this.reader.read();
      if (done) {
        this.done = true;
        return this.buffered >= n;
      }
      if (value === undefined || value.length === 0) continue;
      const chunk = value instanceof Uint8Array ? value : new Uint8Array(value);
      this.chunks.push(chunk);
      this.buffered += chunk.length;
    }
    return true;
  }

  /** Removes and returns the first `n` buffered bytes (there are at least `n`). */
  takeBuffered(n) {
    const out = new Uint8Array(n);
    let filled = 0;
    while (filled < n) {
      const chunk = this.chunks[0];
      const want = n - filled;
      if (chunk.length <= want) {
        out.set(chunk, filled);
        filled += chunk.length;
        this.chunks.shift();
      } else {
        out.set(chunk.subarray(0, want), filled);
        this.chunks[0] = chunk.subarray(want);
        filled += want;
      }
    }
    this.buffered -= n;
    return out;
  }

  async next() {
    if (!(await this.fill(4))) {
      if (this.buffered === 0) return null;
      throw new FrameError('stream ended inside a frame header');
    }
    const header = this.takeBuffered(4);
    const len = new DataView(header.buffer).getUint32(0, false);
    if (len > MAX_FRAME_LEN) {
      throw new FrameError(`frame of ${len} bytes is longer than the maximum of ${MAX_FRAME_LEN}`);
    }
    if (!(await this.fill(len))) {
      throw new FrameError(`stream ended inside a frame of ${len} bytes`);
    }
    return this.takeBuffered(len);
  }
}
