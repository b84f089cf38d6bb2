// The web helper page (docs/web-helper.md): sign in with a helper token or at the tenant's
// provider (PKCE, ./oidc.js, where the relay offers it in sign-in.json), create a session
// and read its code to the user, wait for consent, then see the sharer's screen, drive it
// in full control, chat, change mode and end. Everything travels over one WebTransport
// session to the relay (relay.js), protected end to end with suite 2 (e2e.js), in content
// profile v1 (content.js). No build step, no libraries.
//
// State the tests (relay/tests/helper_page.rs) and styles can see is kept on <body> as data
// attributes: `state` (signed-out, connecting, idle, waiting, joined, active), `error` (the
// last error code's name), `frames` (screen frames drawn), `input` and `chat` ("ready" once
// this side's sealed stream is open).

import * as content from "./content.js";
import { DOMAIN, SUITE_AES_256_GCM, StreamOpener, StreamSealer, aesKey, chooseSuite, deriveKeys, generateKeyPair, transcriptHash } from "./e2e.js";
import { codeName, describe } from "./errors.js";
import { beginSignIn, completeSignIn, SignInError } from "./oidc.js";
import { RelayConnection } from "./relay.js";
import { Channel, MODE_NAMES, Mode, Role, out } from "./wire.js";

/** `Hello.client_name`. */
const CLIENT_NAME = "remote-help-web/1";
/** The suites this page announces: only the one WebCrypto has (AES-256-GCM). */
const SUITES = [SUITE_AES_256_GCM];
const ENDED_BY_CLIENT = 18;
const PEER_ENDED = 12;
const RELAY_LOST = 39;

/** @param {string} id */
const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));
const body = document.body;
const canvas = /** @type {HTMLCanvasElement} */ ($("screen"));

/** A promise with its resolve and reject at hand.
 * @template T */
class Deferred {
  constructor() {
    /** @type {(value: T) => void} */
    this.resolve = () => {};
    /** @type {(reason: unknown) => void} */
    this.reject = () => {};
    /** @type {Promise<T>} */
    this.promise = new Promise((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
    // A session that ends before its keys are agreed leaves this unobserved.
    this.promise.catch(() => {});
  }
}

/** One sealed content stream this side sends on: opened with its start frame; frames go
 * out in order (sealing is asynchronous, so each waits for the one before). */
class ContentSender {
  /** @param {import("./relay.js").DataSender} stream @param {StreamSealer} sealer */
  constructor(stream, sealer) {
    this.stream = stream;
    this.sealer = sealer;
    /** @type {Promise<void>} */
    this.queue = Promise.resolve();
    this.closed = false;
  }

  /** @param {RelayConnection} relay @param {number} channel @param {CryptoKey} key @param {number} streamNumber */
  static async open(relay, channel, key, streamNumber) {
    const sender = new ContentSender(await relay.openChannel(channel), new StreamSealer(key, channel, streamNumber));
    sender.send(content.start(CLIENT_NAME));
    return sender;
  }

  /** @param {Uint8Array} payload */
  send(payload) {
    if (this.closed) return this.queue;
    this.queue = this.queue
      .then(async () => this.stream.send(await this.sealer.seal(payload)))
      .catch((e) => {
        this.closed = true;
        problem(`a data stream failed: ${e}`);
      });
    return this.queue;
  }

  /** The end frame, then FIN. */
  close() {
    if (this.closed) return this.queue;
    this.closed = true;
    this.queue = this.queue.then(async () => {
      await this.stream.send(await this.sealer.end());
      await this.stream.close();
    }).catch(() => {});
    return this.queue;
  }

  /** Gone without an end frame (the relay cut the stream). */
  abort() {
    this.closed = true;
    this.stream.abort();
  }
}

/** An active session: what the relay said, and the end-to-end state. */
class Session {
  /** @param {Extract<import("./wire.js").RelayMessage, {kind: "sessionStarted"}>} started */
  constructor(started) {
    this.id = started.sessionId;
    this.mode = started.mode;
    this.channels = started.channels;
    /** The sharer's key from its keys stream. @type {Deferred<Uint8Array>} */
    this.peerKey = new Deferred();
    /** @type {Deferred<{send: CryptoKey, receive: CryptoKey}>} */
    this.keys = new Deferred();
    /** Stream numbers accepted from the sharer, per channel (replay check, §8.7.3). */
    this.seen = { [Channel.SCREEN]: new Set(), [Channel.CHAT]: new Set() };
    /** @type {ContentSender | undefined} */
    this.input = undefined;
    /** The next input stream's number: a new one after each lowering to view only. */
    this.inputStreams = 0;
    /** @type {ContentSender | undefined} */
    this.chat = undefined;
    this.over = false;
  }
}

/** @type {import("./relay.js").Endpoint | undefined} */
let endpoint;
/** @type {RelayConnection | undefined} */
let relay;
/** This helper, from `Welcome`. @type {import("./wire.js").Profile | undefined} */
let me;
/** The sharer, from `PeerJoined` (or `SessionStarted.peer`). @type {import("./wire.js").Profile | undefined} */
let sharer;
/** The session being started or running; streams that arrive before `SessionStarted` wait
 * for it. @type {Deferred<Session>} */
let nextSession = new Deferred();
/** @type {Session | undefined} */
let session;
let signingOut = false;
let framesDrawn = 0;

// ---------------------------------------------------------------------------------------
// Showing things
// ---------------------------------------------------------------------------------------

/** @param {string} state */
function setState(state) {
  body.dataset.state = state;
  const signedIn = state !== "signed-out" && state !== "connecting";
  $("sign-in").hidden = signedIn;
  $("sign-out").hidden = !signedIn;
  $("start").hidden = state !== "idle";
  $("session").hidden = !["waiting", "joined", "active"].includes(state);
  $("controls").hidden = state !== "active";
  canvas.hidden = state !== "active";
  $("chat").hidden = state !== "active" || !session || !session.channels.includes(Channel.CHAT);
}

/** Shows an error code's sentence. @param {number} code @param {string} [detail] */
function showCode(code, detail) {
  body.dataset.error = codeName(code);
  showError(detail ? `${describe(code)}: ${detail}` : describe(code));
}

/** @param {string} text */
function showError(text) {
  const el = $("error");
  el.textContent = text;
  el.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
  delete body.dataset.error;
}

/** @param {string} text */
function status(text) {
  $("status").textContent = text;
}

/** Something went wrong below the user's level (a broken stream): logged, and kept on the
 * page for whoever debugs it. @param {string} text */
function problem(text) {
  console.warn(text);
  body.dataset.problem = text;
}

/** @param {import("./wire.js").Profile | undefined} p */
function personOf(p) {
  if (!p) return "someone";
  const name = `${p.givenName} ${p.familyName}`.trim() || p.deviceName || p.subject;
  const where = [p.jobTitle, p.companyName].filter(Boolean).join(", ");
  const verified = p.domainVerified && p.domain ? `, verified ${p.domain}` : "";
  return where || verified ? `${name} (${where}${verified})` : name;
}

// ---------------------------------------------------------------------------------------
// Signing in, and the control stream
// ---------------------------------------------------------------------------------------

async function loadConfig() {
  const response = await fetch("config.json", { cache: "no-store" });
  if (!response.ok) throw new Error(`config.json: HTTP ${response.status}`);
  /** @type {{webtransport_url: string, server_certificate_hashes: {algorithm: string, value: string}[]}} */
  const config = await response.json();
  return {
    url: config.webtransport_url,
    hashes: config.server_certificate_hashes.map((h) => ({
      algorithm: h.algorithm,
      value: Uint8Array.from(atob(h.value), (c) => c.charCodeAt(0)),
    })),
  };
}

/** The sessionStorage key of the token a sign-in at the tenant's provider issued (this tab
 * only; a pasted token is kept nowhere). */
const TOKEN_KEY = "rhr-helper-token";

/** @param {string} token */
async function signIn(token) {
  clearError();
  me = undefined;
  setState("connecting");
  status("Connecting to the relay…");
  signingOut = false;
  try {
    endpoint ??= await loadConfig();
    relay = await RelayConnection.connect(endpoint);
  } catch (e) {
    /** On load: finish a sign-in the provider sent the browser back from, then sign in with the
 * token it issued (or one kept from earlier in this tab). */
async function start() {
  setState("signed-out");
  try {
    const done = await completeSignIn(new URL(location.href));
    if (done) sessionStorage.setItem(TOKEN_KEY, done.accessToken);
  } catch (e) {
    showError(e instanceof Error ? e.message : String(e));
    body.dataset.signInFailed = e instanceof SignInError ? e.code : "unknown";
  }
  await loadChoices();
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) await signIn(token);
}

start();
    status("");
    showError(`Cannot reach the relay: ${e instanceof Error ? e.message : e}`);
    return;
  }
  const connection = relay;
  connection.closed.then((closed) => onClosed(connection, closed));
  readChannels(connection);
  await connection.send(out.hello({ token, role: Role.HELPER, clientName: CLIENT_NAME, suites: SUITES }));
  try {
    for await (const message of connection.messages()) await handle(message);
  } catch (e) {
    problem(`the control stream failed: ${e}`);
  }
}

/** The session with the relay is over: before `Welcome` this is how a refusal arrives
 * (§7.1); after it, a fatal `Error` came first and already showed its sentence.
 * @param {RelayConnection} connection @param {import("./relay.js").Closed} closed */
function onClosed(connection, closed) {
  if (connection !== relay) return;
  relay = undefined;
  endSessionState();
  /** On load: finish a sign-in the provider sent the browser back from, then sign in with the
 * token it issued (or one kept from earlier in this tab). */
async function start() {
  setState("signed-out");
  try {
    const done = await completeSignIn(new URL(location.href));
    if (done) sessionStorage.setItem(TOKEN_KEY, done.accessToken);
  } catch (e) {
    showError(e instanceof Error ? e.message : String(e));
    body.dataset.signInFailed = e instanceof SignInError ? e.code : "unknown";
  }
  await loadChoices();
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) await signIn(token);
}

start();
  status("");
  $("who").textContent = "";
  // A provider's token the relay refused (expired, say) is of no further use.
  if (signingOut || (closed.closeCode > 0 && !me)) sessionStorage.removeItem(TOKEN_KEY);
  if (signingOut) return;
  if (closed.closeCode > 0) {
    if (!body.dataset.error || body.dataset.error !== codeName(closed.closeCode)) showCode(closed.closeCode);
  } else if (closed.closeCode < 0) {
    showCode(RELAY_LOST, closed.reason);
  }
}

/** @param {import("./wire.js").RelayMessage} m */
async function handle(m) {
  switch (m.kind) {
    case "welcome":
      me = m.you;
      $("who").textContent = me ? `Signed in as ${personOf(me)} of ${me.tenantId}` : "Signed in";
      status("");
      setState("idle");
      break;
    case "sessionCreated":
      $("code").textContent = m.code;
      $("code-expiry").textContent = `Valid until ${new Date(m.codeExpiresAtMs).toLocaleTimeString()}.`;
      $("code-box").hidden = false;
      $("peer").textContent = "Waiting for the person to enter the code…";
      setState("waiting");
      break;
    case "peerJoined":
      sharer = m.sharer;
      $("code-box").hidden = true;
      $("compliance").hidden = !m.complianceWarning;
      $("peer").textContent = m.complianceWarning
        ? `${personOf(sharer)} joined.`
        : `${personOf(sharer)} joined and is asked to allow the session…`;
      setState("joined");
      break;
    case "sessionStarted":
      await started(m);
      break;
    case "modeChanged":
      status("");
      if (session) await modeChanged(session, m.mode, m.channels);
      break;
    case "sessionEnded":
      endSessionState();
      setState("idle");
      if (m.reason === ENDED_BY_CLIENT || m.reason === PEER_ENDED) {
        clearError();
        status(`Session ended: ${describe(m.reason)}.`);
      } else {
        showCode(m.reason);
        status("Session ended.");
      }
      break;
    case "error":
      // Fatal or not, the sentence is what the user sees; a fatal one is followed by the
      // session's close with the same code.
      // A refused request changed nothing (§7.1), so the page stays where it was.
      status("");
      showCode(m.code);
      break;
    default:
      break;
  }
}

// ---------------------------------------------------------------------------------------
// The session
// ---------------------------------------------------------------------------------------

/** `SessionStarted`: check the suite, exchange keys, show the verification code, open
 * this side's streams (§8.7.1, §8.7.2).
 * @param {Extract<import("./wire.js").RelayMessage, {kind: "sessionStarted"}>} m */
async function started(m) {
  const connection = /** @type {RelayConnection} */ (relay);
  const s = new Session(m);
  session = s;
  if (m.peer) sharer = m.peer;
  nextSession.resolve(s);
  clearError();
  $("code-box").hidden = true;
  $("compliance").hidden = true;
  $("peer").textContent = `Connected to ${personOf(sharer)}.`;
  framesDrawn = 0;
  body.dataset.frames = "0";
  showMode(s.mode);
  setState("active");
  if (!m.peerE2eSuites.length || chooseSuite(SUITES, m.peerE2eSuites) !== m.e2eSuite || m.e2eSuite !== SUITE_AES_256_GCM) {
    // §8.7.1, 4: never send content to an unprotected peer, and stop when the relay named
    // a suite the two announcements do not give.
    showError(m.peerE2eSuites.length
      ? "The relay named a protection method the two apps did not agree on; the session is ended."
      : "The other person's app does not protect the session end to end; the session is ended.");
    await connection.send(out.endSession());
    return;
  }
  try {
    const pair = await generateKeyPair();
    const keysOut = await connection.openChannel(Channel.KEYS);
    await keysOut.send(pair.publicKey);
    await keysOut.close();
    const peerKey = await s.peerKey.promise;
    if (!me || !sharer) throw new Error("a party's profile is unknown");
    const transcript = await transcriptHash({
      sessionId: s.id,
      helper: { tenant: me.tenantId, subject: me.subject },
      sharer: { tenant: sharer.tenantId, subject: sharer.subject },
      helperSuites: SUITES,
      sharerSuites: m.peerE2eSuites,
      suite: m.e2eSuite,
      helperKey: pair.publicKey,
      sharerKey: peerKey,
    });
    const raw = await deriveKeys(pair.privateKey, peerKey, transcript);
    const keys = { send: await aesKey(raw.helperToSharer), receive: await aesKey(raw.sharerToHelper) };
    if (s.over) return;
    $("verification").textContent = raw.code;
    $("verification-box").hidden = false;
    s.keys.resolve(keys);
    // The session may end at any await below (the page's own End, or the peer's): a stream
    // opened for it after that would reach the relay as a stream of whatever session this
    // connection holds next, so each step checks first and drops what came too late.
    if (s.channels.includes(Channel.CHAT) && !s.over) {
      const chat = await ContentSender.open(connection, Channel.CHAT, keys.send, 0);
      if (s.over) {
        chat.abort();
        return;
      }
      s.chat = chat;
      body.dataset.chat = "ready";
    }
    if (s.channels.includes(Channel.INPUT)) await openInput(s);
  } catch (e) {
    s.keys.reject(e);
    if (!s.over) {
      showError(`The end-to-end key exchange failed (${e instanceof Error ? e.message : e}); the session is ended.`);
      await connection.send(out.endSession());
    }
  }
}

/** Opens this side's input stream, numbered after any earlier one. @param {Session} s */
async function openInput(s) {
  if (!relay || s.input || s.over) return;
  const keys = await s.keys.promise;
  if (s.over) return;
  const input = await ContentSender.open(relay, Channel.INPUT, keys.send, s.inputStreams++);
  if (s.over) {
    // Ended while the stream opened (see the key exchange above).
    input.abort();
    return;
  }
  s.input = input;
  body.dataset.input = "ready";
}

/** @param {Session} s @param {number} mode @param {number[]} channels */
async function modeChanged(s, mode, channels) {
  s.mode = mode;
  s.channels = channels;
  showMode(mode);
  if (!channels.includes(Channel.INPUT) && s.input) {
    // The relay stopped the input stream already (§8.5): it is gone, not finished.
    s.input.abort();
    s.input = undefined;
    delete body.dataset.input;
  } else if (channels.includes(Channel.INPUT) && !s.input) {
    await openInput(s);
  }
}

/** @param {number} mode */
function showMode(mode) {
  $("mode-now").textContent = `Now: ${MODE_NAMES[mode] ?? mode}`;
  body.dataset.mode = String(mode);
  /** @type {HTMLSelectElement} */ ($("mode")).value = String(mode);
}

/** Forgets the session (ended, or the connection closed). */
function endSessionState() {
  if (session) {
    session.over = true;
    session.keys.reject(new Error("the session ended"));
    session.input?.abort();
    session.chat?.abort();
  }
  session = undefined;
  sharer = undefined;
  nextSession = new Deferred();
  delete body.dataset.input;
  delete body.dataset.chat;
  $("verification-box").hidden = true;
  $("verification").textContent = "";
  $("code-box").hidden = true;
  $("compliance").hidden = true;
  $("peer").textContent = "";
}

// ---------------------------------------------------------------------------------------
// Incoming data streams: keys, screen, chat
// ---------------------------------------------------------------------------------------

/** @param {RelayConnection} connection */
async function readChannels(connection) {
  try {
    for await (const { tag, reader } of connection.incomingChannels()) {
      if (tag === Channel.KEYS) readKey(reader);
      else if (tag === Channel.SCREEN) readContent(reader, Channel.SCREEN, DOMAIN.SCREEN);
      else if (tag === Channel.CHAT) readContent(reader, Channel.CHAT, DOMAIN.CHAT);
      else reader.cancel();
    }
  } catch (e) {
    if (connection === relay) problem(`accepting streams failed: ${e}`);
  }
}

/** The sharer's public key: one unsealed frame of 32 bytes. @param {import("./wire.js").FrameReader} reader */
async function readKey(reader) {
  const s = nextSession;
  try {
    const key = await reader.frame(64);
    const current = await s.promise;
    if (!key || key.length !== 32) current.peerKey.reject(new Error("the sharer sent no 32-byte key"));
    else current.peerKey.resolve(key);
  } catch (e) {
    problem(`the keys stream failed: ${e}`);
  }
}

/** A sealed content stream from the sharer. @param {import("./wire.js").FrameReader} reader
 * @param {number} channel @param {number} domain */
async function readContent(reader, channel, domain) {
  try {
    const s = await nextSession.promise;
    const keys = await s.keys.promise;
    const opener = new StreamOpener(keys.receive, domain, s.seen[channel]);
    const decoder = new content.ContentReader(channel);
    for (;;) {
      const sealed = await reader.frame();
      if (sealed === undefined) throw new Error("the stream ended without its end frame");
      const payload = await opener.open(sealed);
      if (payload === null) return;
      if (s.over) return;
      const r = decoder.read(payload);
      if (r.kind === "screen") show(r);
      else if (r.kind === "chat") chatLine(r.text, false);
      else if (r.kind === "skipped") {
        body.dataset.skipped = String((Number(body.dataset.skipped) || 0) + 1);
        console.info(`skipped a ${channel === Channel.SCREEN ? "screen" : "chat"} frame: ${r.reason}`);
      }
    }
  } catch (e) {
    // The relay cuts a session's streams when it ends; SessionEnded says why (§8.5).
    if (session) problem(`a ${channel === Channel.SCREEN ? "screen" : "chat"} stream broke: ${e}`);
    reader.cancel();
  }
}

/** The newest frame not yet drawn; older ones are dropped when drawing falls behind.
 * @type {Extract<import("./content.js").Received, {kind: "screen"}> | undefined} */
let pendingFrame;
let drawing = false;

/** @param {Extract<import("./content.js").Received, {kind: "screen"}>} frame */
function show(frame) {
  pendingFrame = frame;
  if (!drawing) draw();
}

async function draw() {
  drawing = true;
  try {
    while (pendingFrame) {
      const frame = pendingFrame;
      pendingFrame = undefined;
      let bitmap;
      try {
        bitmap = await createImageBitmap(new Blob([frame.data], { type: frame.type }));
      } catch {
        console.info(`frame ${frame.frameNumber} does not decode`);
        continue;
      }
      if (bitmap.width !== frame.width || bitmap.height !== frame.height) {
        bitmap.close();
        continue;
      }
      if (canvas.width !== frame.width || canvas.height !== frame.height) {
        canvas.width = frame.width;
        canvas.height = frame.height;
      }
      /** @type {CanvasRenderingContext2D} */ (canvas.getContext("2d")).drawImage(bitmap, 0, 0);
      bitmap.close();
      framesDrawn++;
      body.dataset.frames = String(framesDrawn);
      body.dataset.frameNumber = String(frame.frameNumber);
      $("frames").textContent = `${frame.width} × ${frame.height}, frame ${frame.frameNumber}`;
    }
  } finally {
    drawing = false;
  }
}

/** @param {string} text @param {boolean} mine */
function chatLine(text, mine) {
  const li = document.createElement("li");
  li.textContent = `${mine ? "You" : personOf(sharer)}: ${text}`;
  if (mine) li.className = "mine";
  $("chat-log").append(li);
  li.scrollIntoView({ block: "nearest" });
}

// ---------------------------------------------------------------------------------------
// Input: pointer, wheel and keys on the canvas, in full control (§8.8.4)
// ---------------------------------------------------------------------------------------

/** Sends one input event when this side has an input stream. @param {import("./content.js").Input} event */
function sendInput(event) {
  if (session && session.input) session.input.send(content.input(event));
}

/** The pointer's position normalised to the shared screen. @param {MouseEvent} e */
function position(e) {
  const r = canvas.getBoundingClientRect();
  const clamp = (/** @type {number} */ v) => Math.min(1, Math.max(0, v));
  return { x: clamp((e.clientX - r.left) / r.width), y: clamp((e.clientY - r.top) / r.height) };
}

/** @param {KeyboardEvent | MouseEvent} e */
function modifiers(e) {
  return (e.shiftKey ? 1 : 0) | (e.ctrlKey ? 2 : 0) | (e.altKey ? 4 : 0) | (e.metaKey ? 8 : 0);
}

canvas.addEventListener("pointermove", (e) => {
  if (!session?.input) return;
  const p = position(e);
  if (e.button >= 0 && e.button <= 31) {
    // A second button pressed or released while another is held (a chorded button)
    // arrives as a move with `button` set.
    const down = (e.buttons & buttonBit(e.button)) !== 0;
    sendInput({ kind: "button", button: e.button, down, ...p });
  } else {
    sendInput({ kind: "move", ...p });
  }
});

/** `MouseEvent.buttons` bit of a `MouseEvent.button`. @param {number} button */
function buttonBit(button) {
  return button === 1 ? 4 : button === 2 ? 2 : 1 << button;
}

canvas.addEventListener("pointerdown", (e) => {
  if (!session?.input) return;
  e.preventDefault();
  canvas.focus();
  canvas.setPointerCapture(e.pointerId);
  if (e.button >= 0 && e.button <= 31) sendInput({ kind: "button", button: e.button, down: true, ...position(e) });
});

canvas.addEventListener("pointerup", (e) => {
  if (!session?.input) return;
  if (e.button >= 0 && e.button <= 31) sendInput({ kind: "button", button: e.button, down: false, ...position(e) });
});

canvas.addEventListener("contextmenu", (e) => {
  if (session?.input) e.preventDefault();
});

canvas.addEventListener("wheel", (e) => {
  if (!session?.input) return;
  e.preventDefault();
  // Pixels are the shared screen's (§8.8.4): scale from the drawing to the screen.
  const r = canvas.getBoundingClientRect();
  const scale = e.deltaMode === 0 && r.width > 0 ? canvas.width / r.width : 1;
  if (Number.isFinite(e.deltaX) && Number.isFinite(e.deltaY)) {
    sendInput({ kind: "wheel", dx: e.deltaX * scale, dy: e.deltaY * scale, deltaMode: e.deltaMode });
  }
}, { passive: false });

/** @param {KeyboardEvent} e @param {boolean} down */
function key(e, down) {
  if (!session?.input || !content.validKeyCode(e.code)) return;
  e.preventDefault();
  sendInput({ kind: "key", code: e.code, down, modifiers: modifiers(e) });
}
canvas.addEventListener("keydown", (e) => key(e, true));
canvas.addEventListener("keyup", (e) => key(e, false));

canvas.addEventListener("paste", (e) => {
  if (!session?.input) return;
  const text = e.clipboardData?.getData("text/plain") ?? "";
  const bytes = new TextEncoder().encode(text).length;
  if (bytes >= 1 && bytes <= 4096) {
    e.preventDefault();
    sendInput({ kind: "text", text });
  }
});

// ---------------------------------------------------------------------------------------
// Buttons and forms
// ---------------------------------------------------------------------------------------

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const field = /** @type {HTMLTextAreaElement} */ ($("token"));
  const token = field.value.trim();
  field.value = "";
  if (token) signIn(token);
});

/** @type {import("./oidc.js").SignInChoice[]} */
let choices = [];

/** Offers the tenants whose helpers sign in at their provider (if any). */
async function loadChoices() {
  try {
    const response = await fetch("/helper/sign-in.json", { cache: "no-store", credentials: "omit" });
    choices = response.ok ? await response.json() : [];
  } catch {
    choices = [];
  }
  const select = /** @type {HTMLSelectElement} */ ($("tenant-choice"));
  select.replaceChildren(...choices.map((c) => {
    const option = document.createElement("option");
    option.textContent = c.display_name;
    option.value = c.tenant;
    return option;
  }));
  $("provider-form").hidden = choices.length === 0;
  body.dataset.choices = String(choices.length);
}

$("provider-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const tenant = /** @type {HTMLSelectElement} */ ($("tenant-choice")).value;
  const choice = choices.find((c) => c.tenant === tenant);
  if (!choice) return;
  const button = /** @type {HTMLButtonElement} */ ($("provider-form").querySelector("button"));
  button.disabled = true;
  clearError();
  try {
    // The page's own address is the redirect URI the tenant registered.
    await beginSignIn(choice, `${location.origin}${location.pathname}`);
  } catch (err) {
    button.disabled = false;
    showError(err instanceof Error ? err.message : String(err));
  }
});

$("sign-out").addEventListener("click", () => {
  signingOut = true;
  relay?.close();
});

$("create-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  if (!relay) return;
  clearError();
  status("");
  const mode = Number(/** @type {HTMLSelectElement} */ ($("create-mode")).value) || Mode.FULL_CONTROL;
  const reason = /** @type {HTMLInputElement} */ ($("create-reason")).value.trim();
  await relay.send(out.createSession(mode, reason));
});

$("device-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  if (!relay) return;
  clearError();
  status("");
  const device = /** @type {HTMLInputElement} */ ($("device-id")).value.trim();
  if (device) await relay.send(out.connectUnattended(device, ""));
});

$("compliance-proceed").addEventListener("click", async () => {
  $("compliance").hidden = true;
  $("peer").textContent = `${personOf(sharer)} is asked to allow the session…`;
  await relay?.send(out.confirmCompliance(true));
});

$("compliance-stop").addEventListener("click", async () => {
  $("compliance").hidden = true;
  await relay?.send(out.confirmCompliance(false));
});

$("change-mode").addEventListener("click", async () => {
  if (!relay || !session) return;
  clearError();
  const mode = Number(/** @type {HTMLSelectElement} */ ($("mode")).value);
  status(mode > session.mode ? `Asking ${personOf(sharer)} to allow ${MODE_NAMES[mode]}…` : "");
  await relay.send(out.requestMode(mode, ""));
});

$("end").addEventListener("click", async () => {
  await relay?.send(out.endSession());
});

$("chat-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const field = /** @type {HTMLInputElement} */ ($("chat-text"));
  const text = field.value;
  const bytes = new TextEncoder().encode(text).length;
  if (!session?.chat || bytes < 1 || bytes > 16384) return;
  field.value = "";
  chatLine(text, true);
  await session.chat.send(content.chat(text, Date.now()));
});

/** On load: finish a sign-in the provider sent the browser back from, then sign in with the
 * token it issued (or one kept from earlier in this tab). */
async function start() {
  setState("signed-out");
  try {
    const done = await completeSignIn(new URL(location.href));
    if (done) sessionStorage.setItem(TOKEN_KEY, done.accessToken);
  } catch (e) {
    showError(e instanceof Error ? e.message : String(e));
    body.dataset.signInFailed = e instanceof SignInError ? e.code : "unknown";
  }
  await loadChoices();
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) await signIn(token);
}

start();
