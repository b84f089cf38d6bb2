// End-to-end protection, suite 2 (X25519 + HKDF-SHA256 + AES-256-GCM, PROTOCOL.md §8.7),
// with the browser's own WebCrypto (crypto.subtle) and nothing else: the key exchange on
// the keys channel, the transcript, the direction keys, the six-digit verification code,
// and sealed frames with their counters and checks.

/** The suite this page implements and announces. */
export const SUITE_AES_256_GCM = 2;
/** Domains (nonce prefix and associated data) of the channels; screen datagrams are
 * `0x80000001` but profile 1 does not use them. */
export const DOMAIN = Object.freeze({ SCREEN: 1, INPUT: 2, CHAT: 3 });
/** Type byte after a sealed frame's payload. */
const DATA = 0;
const END = 1;

const subtle = globalThis.crypto.subtle;
const text = new TextEncoder();

/** The suite the helper's and the sharer's announcements give: the first of the helper's
 * that the sharer's also lists (§8.7.1), or 0.
 * @param {number[]} helper @param {number[]} sharer */
export function chooseSuite(helper, sharer) {
  return helper.find((id) => id !== 0 && sharer.includes(id)) ?? 0;
}

/** This side's ephemeral X25519 key pair: the private key stays inside WebCrypto.
 * @returns {Promise<{privateKey: CryptoKey, publicKey: Uint8Array}>} */
export async function generateKeyPair() {
  const pair = /** @type {CryptoKeyPair} */ (await subtle.generateKey({ name: "X25519" }, false, ["deriveBits"]));
  return { privateKey: pair.privateKey, publicKey: new Uint8Array(await subtle.exportKey("raw", pair.publicKey)) };
}

/** An X25519 private key given as its 32 raw bytes (for the published test vectors).
 * @param {Uint8Array} raw */
export async function importPrivateKey(raw) {
  // PKCS #8 for X25519 (RFC 8410): a fixed 16-byte prefix, then the key.
  const prefix = [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20];
  const der = new Uint8Array([...prefix, ...raw]);
  return subtle.importKey("pkcs8", der, { name: "X25519" }, false, ["deriveBits"]);
}

/** The parties as the relay presented them. @typedef {{tenant: string, subject: string}} Party */

/** What the transcript binds (§8.7.2).
 * @typedef {{sessionId: string, helper: Party, sharer: Party, helperSuites: number[],
 *   sharerSuites: number[], suite: number, helperKey: Uint8Array, sharerKey: Uint8Array}} Transcript */

/** SHA-256 over the 11 length-prefixed fields. @param {Transcript} t */
export async function transcriptHash(t) {
  /** @param {number[]} ids */
  const ids = (ids) => {
    const b = new Uint8Array(ids.length * 4);
    ids.forEach((id, i) => new DataView(b.buffer).setUint32(i * 4, id));
    return b;
  };
  const parts = [
    text.encode("remote-help e2e v2"),
    text.encode(t.sessionId),
    text.encode(t.helper.tenant),
    text.encode(t.helper.subject),
    text.encode(t.sharer.tenant),
    text.encode(t.sharer.subject),
    ids(t.helperSuites),
    ids(t.sharerSuites),
    ids([t.suite]),
    t.helperKey,
    t.sharerKey,
  ];
  const total = parts.reduce((n, p) => n + 4 + p.length, 0);
  const all = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    new DataView(all.buffer).setUint32(at, p.length);
    all.set(p, at + 4);
    at += 4 + p.length;
  }
  return new Uint8Array(await subtle.digest("SHA-256", all));
}

/** The session's keys and verification code.
 * @typedef {{helperToSharer: Uint8Array, sharerToHelper: Uint8Array, code: string}} RawKeys */

/** Derives both direction keys and the verification code from this side's private key, the
 * peer's public key and the transcript hash: HKDF-SHA256 with the transcript hash as salt
 * (WebCrypto's HKDF is Extract then Expand, as §8.7.2 specifies).
 * @param {CryptoKey} privateKey @param {Uint8Array} peerPublic @param {Uint8Array} transcript
 * @returns {Promise<RawKeys>} */
export async function deriveKeys(privateKey, peerPublic, transcript) {
  const peer = await subtle.importKey("raw", peerPublic, { name: "X25519" }, true, []);
  const shared = await subtle.deriveBits({ name: "X25519", public: peer }, privateKey, 256);
  const ikm = await subtle.importKey("raw", shared, "HKDF", false, ["deriveBits"]);
  /** @param {string} info @param {number} bits */
  const expand = async (info, bits) =>
    new Uint8Array(await subtle.deriveBits({ name: "HKDF", hash: "SHA-256", salt: transcript, info: text.encode(info) }, ikm, bits));
  const helperToSharer = await expand("helper to sharer", 256);
  const sharerToHelper = await expand("sharer to helper", 256);
  const codeBytes = await expand("verification code", 32);
  const n = new DataView(codeBytes.buffer).getUint32(0) % 1000000;
  const digits = String(n).padStart(6, "0");
  return { helperToSharer, sharerToHelper, code: `${digits.slice(0, 3)} ${digits.slice(3)}` };
}

/** An AES-256-GCM key for sealing or opening. @param {Uint8Array} raw */
export function aesKey(raw) {
  return subtle.importKey("raw", raw, { name: "AES-GCM" }, false, ["encrypt", "decrypt"]);
}

/** `domain (u32 BE)`. @param {number} domain */
function domainBytes(domain) {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, domain);
  return b;
}

/** Seals one frame: `counter (u64 BE) ‖ AES-GCM(payload ‖ type) ‖ tag`.
 * @param {CryptoKey} key @param {number} domain @param {number} stream @param {number} frameNumber
 * @param {Uint8Array} payload @param {number} type */
export async function sealFrame(key, domain, stream, frameNumber, payload, type) {
  const counter = new Uint8Array(8);
  new DataView(counter.buffer).setUint32(0, stream);
  new DataView(counter.buffer).setUint32(4, frameNumber);
  const nonce = new Uint8Array([...domainBytes(domain), ...counter]);
  const plain = new Uint8Array(payload.length + 1);
  plain.set(payload);
  plain[payload.length] = type;
  const sealed = new Uint8Array(await subtle.encrypt({ name: "AES-GCM", iv: nonce, additionalData: domainBytes(domain), tagLength: 128 }, key, plain));
  const out = new Uint8Array(8 + sealed.length);
  out.set(counter);
  out.set(sealed, 8);
  return out;
}

/** Seals the frames of one outgoing stream, numbering them; the end frame closes it. */
export class StreamSealer {
  /** @param {CryptoKey} key @param {number} domain @param {number} stream the channel's stream number */
  constructor(key, domain, stream) {
    this.key = key;
    this.domain = domain;
    this.stream = stream;
    this.next = 0;
  }
  /** @param {Uint8Array} payload */
  seal(payload) {
    return sealFrame(this.key, this.domain, this.stream, this.take(), payload, DATA);
  }
  /** The end frame (type 1, empty payload). */
  end() {
    return sealFrame(this.key, this.domain, this.stream, this.take(), new Uint8Array(0), END);
  }
  take() {
    if (this.next > 0xffffffff) throw new Error("frame counter exhausted");
    return this.next++;
  }
}

/** Opens the frames of one incoming stream with every check of §8.7.3: it authenticates,
 * the first frame is number 0 of a stream number not seen before on this channel, later ones
 * follow in order, nothing after the end frame. Any failure throws: the stream is broken. */
export class StreamOpener {
  /** @param {CryptoKey} key @param {number} domain @param {Set<number>} seenStreams this
   * channel's stream numbers already accepted from the peer in this session */
  constructor(key, domain, seenStreams) {
    this.key = key;
    this.domain = domain;
    this.seen = seenStreams;
    /** @type {number | undefined} */
    this.stream = undefined;
    this.next = 0;
    this.ended = false;
  }

  /** The payload of a data frame, or `null` for the end frame.
   * @param {Uint8Array} sealed @returns {Promise<Uint8Array | null>} */
  async open(sealed) {
    if (this.ended) throw new Error("a frame after the end frame");
    if (sealed.length < 8 + 16 + 1) throw new Error("a sealed frame too short");
    const view = new DataView(sealed.buffer, sealed.byteOffset, 8);
    const stream = view.getUint32(0);
    const frameNumber = view.getUint32(4);
    if (this.stream === undefined) {
      if (frameNumber !== 0) throw new Error("a stream's first frame is not number 0");
      if (this.seen.has(stream)) throw new Error("a replayed stream");
    } else if (stream !== this.stream || frameNumber !== this.next) {
      throw new Error("a frame out of order");
    }
    const nonce = new Uint8Array([...domainBytes(this.domain), ...sealed.subarray(0, 8)]);
    let plain;
    try {
      plain = new Uint8Array(await subtle.decrypt({ name: "AES-GCM", iv: nonce, additionalData: domainBytes(this.domain), tagLength: 128 }, this.key, sealed.subarray(8)));
    } catch {
      throw new Error("a frame that does not authenticate");
    }
    if (this.stream === undefined) {
      this.stream = stream;
      this.seen.add(stream);
    }
    this.next = frameNumber + 1;
    const type = plain[plain.length - 1];
    if (type === DATA) return plain.subarray(0, plain.length - 1);
    if (type === END && plain.length === 1) {
      this.ended = true;
      return null;
    }
    throw new Error("an unknown type byte, or an end frame with a payload");
  }
}
