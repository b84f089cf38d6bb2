// The page's connection to the relay: one WebTransport session (PROTOCOL.md §2a) with the
// control stream (its first bidirectional stream, length-prefixed protobuf, §3.2), the data
// streams it opens (tag byte, then frames, §8.2) and those the relay opens towards it.

import { FrameReader, decodeRelayToClient, frame } from "./wire.js";

/** Send priorities of the streams a client opens (§8.2): keys first, then input, chat,
 * screen. @type {Record<number, number>} */
const SEND_ORDER = { 1: 0, 2: 2, 3: 1, 4: 3 };
/** The largest control frame the page accepts from the relay (any configuration's). */
const MAX_CONTROL = 1 << 20;

/** Where and how to reach the relay, from `/helper/config.json`.
 * @typedef {{url: string, hashes: {algorithm: string, value: Uint8Array}[]}} Endpoint */

/** How the session closed: the code and sentence the relay closed it with (§7.1).
 * @typedef {{closeCode: number, reason: string}} Closed */

/** One outgoing data stream: write frames, then close. */
export class DataSender {
  /** @param {WritableStreamDefaultWriter<Uint8Array>} writer */
  constructor(writer) {
    this.writer = writer;
  }
  /** One length-prefixed frame. @param {Uint8Array} body */
  send(body) {
    return this.writer.write(frame(body));
  }
  /** Finishes the stream (FIN). */
  close() {
    return this.writer.close();
  }
  /** Resets the stream. */
  abort() {
    return this.writer.abort().catch(() => {});
  }
}

export class RelayConnection {
  /** @param {WebTransport} transport @param {WritableStreamDefaultWriter<Uint8Array>} control
   * @param {FrameReader} replies */
  constructor(transport, control, replies) {
    this.transport = transport;
    this.control = control;
    this.replies = replies;
    /** Resolves when the session is closed, however it closed.
     * @type {Promise<Closed>} */
    this.closed = transport.closed.then(
      (info) => ({ closeCode: info.closeCode ?? 0, reason: info.reason ?? "" }),
      (error) => ({ closeCode: -1, reason: String(error && error.message ? error.message : error) }),
    );
  }

  /** Opens the WebTransport session and its control stream.
   * @param {Endpoint} endpoint */
  static async connect(endpoint) {
    /** @type {WebTransportOptions} */
    const options = endpoint.hashes.length ? { serverCertificateHashes: endpoint.hashes } : {};
    const transport = new WebTransport(endpoint.url, options);
    await transport.ready;
    const control = await transport.createBidirectionalStream();
    return new RelayConnection(transport, control.writable.getWriter(), new FrameReader(control.readable));
  }

  /** Sends one control message (an encoded `ClientToRelay`). @param {Uint8Array} message */
  send(message) {
    return this.control.write(frame(message));
  }

  /** The relay's control messages, in order, until the control stream ends. */
  async *messages() {
    for (;;) {
      const body = await this.replies.frame(MAX_CONTROL);
      if (body === undefined) return;
      yield decodeRelayToClient(body);
    }
  }

  /** Opens a data stream for channel `tag` and writes its tag byte. @param {number} tag */
  async openChannel(tag) {
    const stream = await this.transport.createUnidirectionalStream({ sendOrder: SEND_ORDER[tag] ?? 0 });
    const writer = stream.getWriter();
    await writer.write(new Uint8Array([tag]));
    return new DataSender(writer);
  }

  /** The data streams the relay opens towards the page: each with its tag byte read.
   * @returns {AsyncGenerator<{tag: number, reader: FrameReader}>} */
  async *incomingChannels() {
    const streams = this.transport.incomingUnidirectionalStreams.getReader();
    for (;;) {
      const { value, done } = await streams.read();
      if (done) return;
      const reader = new FrameReader(value);
      const tag = await reader.byte();
      // A stream that ends before its tag byte carries nothing.
      if (tag !== undefined) yield { tag, reader };
    }
  }

  /** Closes the session with code 0 (an ordinary close, §7.1). */
  close() {
    try {
      this.transport.close({ closeCode: 0, reason: "" });
    } catch {
      // Already closed.
    }
  }
}
