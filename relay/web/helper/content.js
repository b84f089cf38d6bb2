// Content profile v1 (PROTOCOL.md §8.8): what the page puts inside data frames and reads
// from them. Each frame (each sealed frame's payload) is one protobuf `Content`; every
// stream opens with a `ContentStart`. A frame the page cannot use is skipped and counted,
// never a reason to end the session (§8.8.6).

import { Message, Writer } from "./wire.js";

/** The profile this page speaks. */
export const PROFILE = 1;
/** The largest `Content` (§8.8.1). */
export const MAX_CONTENT = 4193280;
/** `ImageFormat` to a media type for `createImageBitmap`. @type {Record<number, string>} */
const IMAGE_TYPES = { 1: "image/png", 2: "image/jpeg" };
const MAX_SIDE = 16384;

/** `Content.start`. @param {string} software */
export function start(software) {
  return new Writer().message(1, new Writer().uint(1, PROFILE).string(2, software)).finish();
}

/** `Content.chat`. @param {string} text @param {number} sentAtMs */
export function chat(text, sentAtMs) {
  return new Writer().message(4, new Writer().string(1, text).uint(2, sentAtMs)).finish();
}

/** `Content.key_frame_request`. */
export function keyFrameRequest() {
  return new Writer().message(5, new Writer()).finish();
}

/** One input event (§8.8.4), as the page builds it.
 * @typedef {{kind: "move", x: number, y: number}
 *  | {kind: "button", button: number, down: boolean, x: number, y: number}
 *  | {kind: "wheel", dx: number, dy: number, deltaMode: number}
 *  | {kind: "key", code: string, down: boolean, modifiers: number}
 *  | {kind: "text", text: string}} Input */

/** `Content.input`. @param {Input} e */
export function input(e) {
  const w = new Writer();
  switch (e.kind) {
    case "move":
      w.message(1, new Writer().double(1, e.x).double(2, e.y));
      break;
    case "button":
      w.message(2, new Writer().uint(1, e.button).bool(2, e.down).double(3, e.x).double(4, e.y));
      break;
    case "wheel":
      w.message(3, new Writer().double(1, e.dx).double(2, e.dy).uint(3, e.deltaMode));
      break;
    case "key":
      w.message(4, new Writer().string(1, e.code).bool(2, e.down).uint(3, e.modifiers));
      break;
    case "text":
      w.message(5, new Writer().string(1, e.text));
      break;
  }
  return new Writer().message(3, w).finish();
}

/** Whether `code` is a key code the profile allows: 1 to 32 ASCII letters and digits.
 * @param {string} code */
export function validKeyCode(code) {
  return /^[A-Za-z0-9]{1,32}$/.test(code);
}

/** What a received frame holds, or why it was skipped.
 * @typedef {{kind: "start", profile: number, software: string}
 *  | {kind: "screen", frameNumber: number, timestampUs: number, width: number, height: number, type: string, data: Uint8Array}
 *  | {kind: "chat", text: string, sentAtMs: number}
 *  | {kind: "keyFrameRequest"}
 *  | {kind: "skipped", reason: string}} Received */

/** Reads the frames of one incoming content stream on `channel` (1 screen, 3 chat), keeping
 * the stream's state: its start, and the last screen frame number. */
export class ContentReader {
  /** @param {number} channel */
  constructor(channel) {
    this.channel = channel;
    this.started = false;
    this.foreign = false;
    /** @type {number | undefined} */
    this.lastFrame = undefined;
    this.skipped = 0;
  }

  /** @param {Uint8Array} frame @returns {Received} */
  read(frame) {
    const r = this.decode(frame);
    if (r.kind === "skipped") this.skipped++;
    return r;
  }

  /** @param {Uint8Array} frame @returns {Received} */
  decode(frame) {
    /** @param {string} reason @returns {Received} */
    const skip = (reason) => ({ kind: "skipped", reason });
    if (frame.length > MAX_CONTENT) return skip("TooLarge");
    let member;
    try {
      member = new Message(frame).oneof();
    } catch {
      return skip("Undecodable");
    }
    if (!member || member[0] > 5) return skip("Unknown");
    const [n, body] = member;
    let m;
    try {
      m = new Message(body);
    } catch {
      return skip("Undecodable");
    }
    if (n === 1) {
      if (this.started || this.foreign) return skip("SecondStart");
      const profile = m.uint(1);
      if (profile !== PROFILE) {
        this.foreign = true;
        return skip("UnsupportedProfile");
      }
      this.started = true;
      return { kind: "start", profile, software: m.string(2) };
    }
    if (!this.started) return skip("NotStarted");
    if (n === 2) {
      if (this.channel !== 1) return skip("WrongChannel");
      const width = m.uint(3);
      const height = m.uint(4);
      if (width < 1 || height < 1 || width > MAX_SIDE || height > MAX_SIDE) return skip("ScreenSize");
      const type = IMAGE_TYPES[m.uint(5)];
      if (!type) return skip("ImageFormat");
      const data = m.bytes(6);
      const png = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
      const jpeg = [0xff, 0xd8, 0xff];
      const signature = type === "image/png" ? png : jpeg;
      if (data.length < signature.length || signature.some((b, i) => data[i] !== b)) return skip("NotAnImage");
      const frameNumber = m.uint(1);
      if (this.lastFrame !== undefined && frameNumber <= this.lastFrame) return skip("FrameNumber");
      this.lastFrame = frameNumber;
      return { kind: "screen", frameNumber, timestampUs: m.uint(2), width, height, type, data };
    }
    if (n === 4) {
      if (this.channel !== 3) return skip("WrongChannel");
      let text;
      try {
        text = m.string(1);
      } catch {
        return skip("Undecodable");
      }
      const bytes = m.bytes(1).length;
      if (bytes < 1 || bytes > 16384) return skip("TextLength");
      return { kind: "chat", text, sentAtMs: m.uint(2) };
    }
    if (n === 5) return { kind: "keyFrameRequest" };
    // Input goes helper → sharer only.
    return skip("WrongChannel");
  }
}
