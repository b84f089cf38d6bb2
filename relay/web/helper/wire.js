// The wire: a minimal hand-written protobuf encoder and decoder for the messages this page
// uses (proto/proto/remote_help.proto, package remotehelp.v1), and the length-prefixed
// framing of the control stream and of data streams (PROTOCOL.md §3.2, §8.3).
//
// Protobuf in a few lines (PROTOCOL.md §8.8.7): each field is a key (field number << 3 |
// wire type; 0 varint, 1 64-bit little-endian, 2 length-delimited, 5 32-bit) and a value;
// proto3 leaves out fields equal to their default, and a decoder skips keys it does not know.
// Numbers are JavaScript numbers: every 64-bit field this page reads (times, frame numbers,
// nonces) stays below 2^53.

/** The largest frame this page accepts: a control frame of any relay configuration (1 MiB)
 * and a data frame of content profile v1 (4 MiB, sealed). */
export const MAX_FRAME = 4 << 20;

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

/** Builds one protobuf message, field by field. Default values are left out (proto3). */
export class Writer {
  constructor() {
    /** @type {number[]} */
    this.bytes = [];
  }

  /** @param {number} n a non-negative integer below 2^53 */
  varint(n) {
    while (n >= 0x80) {
      this.bytes.push((n % 0x80) | 0x80);
      n = Math.floor(n / 0x80);
    }
    this.bytes.push(n);
    return this;
  }

  /** @param {number} field @param {number} wireType */
  key(field, wireType) {
    return this.varint(field * 8 + wireType);
  }

  /** An unsigned integer or enum field. @param {number} field @param {number} n */
  uint(field, n) {
    return n ? this.key(field, 0).varint(n) : this;
  }

  /** @param {number} field @param {boolean} b */
  bool(field, b) {
    return b ? this.key(field, 0).varint(1) : this;
  }

  /** @param {number} field @param {number} x */
  double(field, x) {
    if (x === 0) return this;
    const b = new Uint8Array(8);
    new DataView(b.buffer).setFloat64(0, x, true);
    this.key(field, 1);
    this.bytes.push(...b);
    return this;
  }

  /** @param {number} field @param {string} s */
  string(field, s) {
    return s ? this.raw(field, encoder.encode(s)) : this;
  }

  /** A length-delimited field, written even when empty (an embedded message that is set).
   * @param {number} field @param {Uint8Array} b */
  raw(field, b) {
    this.key(field, 2).varint(b.length);
    for (const x of b) this.bytes.push(x);
    return this;
  }

  /** An embedded message. @param {number} field @param {Writer} w */
  message(field, w) {
    return this.raw(field, w.finish());
  }

  /** A packed repeated unsigned field. @param {number} field @param {number[]} list */
  packed(field, list) {
    if (!list.length) return this;
    const inner = new Writer();
    for (const n of list) inner.varint(n);
    return this.raw(field, inner.finish());
  }

  /** @returns {Uint8Array} */
  finish() {
    return Uint8Array.from(this.bytes);
  }
}

/** One decoded field: its number, wire type and value (a number for varints, the bytes for
 * length-delimited fields, a DataView over the 8 or 4 bytes of fixed ones).
 * @typedef {{field: number, type: number, value: number | Uint8Array | DataView}} Field */

/** The fields of one protobuf message, in order.
 * @param {Uint8Array} b
 * @returns {Field[]} */
export function fields(b) {
  /** @type {Field[]} */
  const out = [];
  let i = 0;
  const varint = () => {
    let n = 0;
    let scale = 1;
    for (let k = 0; k < 10; k++) {
      if (i >= b.length) throw new Error("truncated varint");
      const byte = b[i++];
      n += (byte & 0x7f) * scale;
      scale *= 0x80;
      if (byte < 0x80) return n;
    }
    throw new Error("varint too long");
  };
  while (i < b.length) {
    const key = varint();
    const field = Math.floor(key / 8);
    const type = key % 8;
    if (field === 0) throw new Error("field number 0");
    let value;
    if (type === 0) {
      value = varint();
    } else if (type === 1 || type === 5) {
      const len = type === 1 ? 8 : 4;
      if (i + len > b.length) throw new Error("truncated fixed field");
      value = new DataView(b.buffer, b.byteOffset + i, len);
      i += len;
    } else if (type === 2) {
      const len = varint();
      if (i + len > b.length) throw new Error("truncated length-delimited field");
      value = b.subarray(i, i + len);
      i += len;
    } else {
      throw new Error(`unsupported wire type ${type}`);
    }
    out.push({ field, type, value });
  }
  return out;
}

/** Field accessors over a decoded message: the last value of a field wins (protobuf's rule),
 * missing fields read as their default. */
export class Message {
  /** @param {Uint8Array} b */
  constructor(b) {
    this.list = fields(b);
  }
  /** @param {number} f */
  last(f) {
    let v;
    for (const x of this.list) if (x.field === f) v = x;
    return v;
  }
  /** @param {number} f @returns {number} */
  uint(f) {
    const v = this.last(f);
    return v && v.type === 0 ? /** @type {number} */ (v.value) : 0;
  }
  /** @param {number} f */
  bool(f) {
    return this.uint(f) !== 0;
  }
  /** @param {number} f @returns {number} */
  double(f) {
    const v = this.last(f);
    return v && v.type === 1 ? /** @type {DataView} */ (v.value).getFloat64(0, true) : 0;
  }
  /** @param {number} f @returns {Uint8Array} */
  bytes(f) {
    const v = this.last(f);
    return v && v.type === 2 ? /** @type {Uint8Array} */ (v.value) : new Uint8Array(0);
  }
  /** @param {number} f */
  string(f) {
    return decoder.decode(this.bytes(f));
  }
  /** An embedded message, or undefined when absent. @param {number} f */
  message(f) {
    const v = this.last(f);
    return v && v.type === 2 ? new Message(/** @type {Uint8Array} */ (v.value)) : undefined;
  }
  /** A repeated unsigned field, packed or not. @param {number} f @returns {number[]} */
  repeated(f) {
    /** @type {number[]} */
    const out = [];
    for (const x of this.list) {
      if (x.field !== f) continue;
      if (x.type === 0) out.push(/** @type {number} */ (x.value));
      else if (x.type === 2) for (const y of fields(packedAsFields(/** @type {Uint8Array} */ (x.value)))) out.push(/** @type {number} */ (y.value));
    }
    return out;
  }
  /** The one member of a `oneof` set (the last one present), as [field number, bytes].
   * @returns {[number, Uint8Array] | undefined} */
  oneof() {
    for (let k = this.list.length - 1; k >= 0; k--) {
      const x = this.list[k];
      if (x.type === 2) return [x.field, /** @type {Uint8Array} */ (x.value)];
    }
    return undefined;
  }
}

/** Packed varints re-keyed as field 1 varints, so that `fields` can read them. */
function packedAsFields(/** @type {Uint8Array} */ b) {
  const out = [];
  let start = true;
  for (const x of b) {
    if (start) out.push(0x08);
    out.push(x);
    start = x < 0x80;
  }
  return Uint8Array.from(out);
}

// ---------------------------------------------------------------------------------------
// Enums and the control messages
// ---------------------------------------------------------------------------------------

/** `Role`. */
export const Role = Object.freeze({ HELPER: 1, SHARER: 2 });
/** `Mode`. */
export const Mode = Object.freeze({ VIEW_ONLY: 1, FULL_CONTROL: 2, ELEVATION: 3, UNATTENDED: 4 });
/** `Mode` names for people. @type {Record<number, string>} */
export const MODE_NAMES = { 1: "view only", 2: "full control", 3: "elevation", 4: "unattended" };
/** `Channel`: the tag byte of a data stream. */
export const Channel = Object.freeze({ SCREEN: 1, INPUT: 2, CHAT: 3, KEYS: 4 });

/** The protocol version this page speaks. */
export const PROTOCOL_VERSION = 1;

/** `ClientToRelay` envelopes: each returns the serialized message. */
export const out = {
  /** @param {{token: string, role: number, clientName: string, suites: number[]}} h */
  hello: (h) =>
    envelope(1, new Writer().uint(1, PROTOCOL_VERSION).string(2, h.token).uint(3, h.role).string(4, h.clientName).packed(5, h.suites)),
  /** @param {number} mode @param {string} reason */
  createSession: (mode, reason) => envelope(2, new Writer().uint(1, mode).string(2, reason)),
  endSession: () => envelope(5, new Writer()),
  /** @param {number} nonce */
  ping: (nonce) => envelope(6, new Writer().uint(1, nonce)),
  /** @param {number} mode @param {string} reason */
  requestMode: (mode, reason) => envelope(7, new Writer().uint(1, mode).string(2, reason)),
  /** @param {boolean} proceed */
  confirmCompliance: (proceed) => envelope(8, new Writer().bool(1, proceed)),
  /** @param {string} deviceId @param {string} reason */
  connectUnattended: (deviceId, reason) => envelope(10, new Writer().string(1, deviceId).string(2, reason)),
};

/** @param {number} member @param {Writer} body */
function envelope(member, body) {
  return new Writer().message(member, body).finish();
}

/** A party's `Profile`, as far as this page shows it.
 * @typedef {{tenantId: string, subject: string, givenName: string, familyName: string,
 *   jobTitle: string, companyName: string, domain: string, domainVerified: boolean,
 *   deviceName: string}} Profile */

/** @param {Message | undefined} m @returns {Profile | undefined} */
function profile(m) {
  if (!m) return undefined;
  const device = m.message(11);
  return {
    tenantId: m.string(2),
    subject: m.string(3),
    givenName: m.string(4),
    familyName: m.string(5),
    jobTitle: m.string(6),
    companyName: m.string(7),
    domain: m.string(9),
    domainVerified: m.bool(10),
    deviceName: device ? device.string(2) : "",
  };
}

/** A decoded `RelayToClient`: `kind` names the member; unknown members come as `unknown`.
 * @typedef {{kind: "welcome", you: Profile | undefined, observedAddr: string, maxMessageSize: number, relayVersion: string}
 *  | {kind: "sessionCreated", sessionId: string, code: string, codeExpiresAtMs: number}
 *  | {kind: "peerJoined", sharer: Profile | undefined, complianceWarning: boolean}
 *  | {kind: "sessionStarted", sessionId: string, mode: number, channels: number[], chatDisabled: boolean,
 *     peer: Profile | undefined, e2eSuite: number, peerE2eSuites: number[]}
 *  | {kind: "sessionEnded", sessionId: string, reason: number, message: string}
 *  | {kind: "error", code: number, message: string, fatal: boolean}
 *  | {kind: "pong", nonce: number}
 *  | {kind: "modeChanged", sessionId: string, mode: number, channels: number[]}
 *  | {kind: "unknown", member: number}} RelayMessage */

/** Decodes one `RelayToClient`. @param {Uint8Array} b @returns {RelayMessage} */
export function decodeRelayToClient(b) {
  const member = new Message(b).oneof();
  if (!member) throw new Error("a relay message with no member set");
  const [n, body] = member;
  const m = new Message(body);
  switch (n) {
    case 1:
      return { kind: "welcome", you: profile(m.message(1)), observedAddr: m.string(2), maxMessageSize: m.uint(3), relayVersion: m.string(4) };
    case 2:
      return { kind: "sessionCreated", sessionId: m.string(1), code: m.string(2), codeExpiresAtMs: m.uint(3) };
    case 3:
      return { kind: "peerJoined", sharer: profile(m.message(1)), complianceWarning: m.bool(2) };
    case 5:
      return {
        kind: "sessionStarted", sessionId: m.string(1), mode: m.uint(2), channels: m.repeated(3),
        chatDisabled: m.bool(5), peer: profile(m.message(6)), e2eSuite: m.uint(8), peerE2eSuites: m.repeated(9),
      };
    case 6:
      return { kind: "sessionEnded", sessionId: m.string(1), reason: m.uint(2), message: m.string(3) };
    case 7:
      return { kind: "error", code: m.uint(1), message: m.string(2), fatal: m.bool(3) };
    case 8:
      return { kind: "pong", nonce: m.uint(1) };
    case 9:
      return { kind: "modeChanged", sessionId: m.string(1), mode: m.uint(2), channels: m.repeated(3) };
    default:
      // PROTOCOL.md §6.3: a client ignores a member it does not know.
      return { kind: "unknown", member: n };
  }
}

// ---------------------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------------------

/** `u32 big-endian length ‖ bytes`. @param {Uint8Array} body */
export function frame(body) {
  const out = new Uint8Array(4 + body.length);
  new DataView(out.buffer).setUint32(0, body.length);
  out.set(body, 4);
  return out;
}

/** Reads a byte stream: single bytes (a data stream's tag) and length-prefixed frames. */
export class FrameReader {
  /** @param {ReadableStream<Uint8Array>} stream */
  constructor(stream) {
    this.reader = stream.getReader();
    this.buffer = new Uint8Array(0);
  }

  /** Waits until `n` bytes are buffered; false if the stream ended first. @param {number} n */
  async fill(n) {
    while (this.buffer.length < n) {
      const { value, done } = await this.reader.read();
      if (done) return false;
      const joined = new Uint8Array(this.buffer.length + value.length);
      joined.set(this.buffer);
      joined.set(value, this.buffer.length);
      this.buffer = joined;
    }
    return true;
  }

  /** @param {number} n */
  take(n) {
    const out = this.buffer.slice(0, n);
    this.buffer = this.buffer.subarray(n);
    return out;
  }

  /** The stream's next byte, or undefined at its end. */
  async byte() {
    return (await this.fill(1)) ? this.take(1)[0] : undefined;
  }

  /** The next frame's bytes, or undefined at the stream's end (a partial trailing frame is
   * dropped, PROTOCOL.md §16). @param {number} [max] */
  async frame(max = MAX_FRAME) {
    if (!(await this.fill(4))) return undefined;
    const len = new DataView(this.buffer.buffer, this.buffer.byteOffset, 4).getUint32(0);
    if (len > max) throw new Error(`a frame of ${len} bytes is over the limit of ${max}`);
    if (!(await this.fill(4 + len))) return undefined;
    this.take(4);
    return this.take(len);
  }

  /** Stops reading (STOP_SENDING towards the sender). */
  cancel() {
    this.reader.cancel().catch(() => {});
  }
}
