// Browser sign-in at a tenant's OpenID Connect provider: the authorization code flow with
// PKCE (S256) for a public client, as RFC 9700 and the OAuth 2.0 for Browser-Based Apps
// draft recommend. A small ES module, no libraries, no build step; any page of the relay
// imports it (the Monitor page: docs/reports.md, "Signing in with the tenant's provider"; the
// web helper page: docs/web-helper.md, served there as /helper/oidc.js).
//
// beginSignIn() fetches the provider's discovery document, keeps a fresh state, nonce and
// code verifier in sessionStorage (this tab only) and goes to the authorization endpoint;
// completeSignIn() on the page the provider sends the browser back to checks the answer
// (state, issuer, nonce), exchanges the code at the token endpoint and returns the access
// token. Nothing goes to localStorage or cookies.

/**
 * A tenant's sign-in as the relay offers it (GET /monitor/sign-in.json, /helper/sign-in.json).
 * @typedef {{tenant: string, display_name: string, issuer: string, client_id: string,
 *   scopes: string[], resource: string|null, audience: string}} SignInChoice
 */

/**
 * A sign-in under way, kept in sessionStorage while the browser is at the provider.
 * @typedef {{choice: SignInChoice, state: string, nonce: string, verifier: string,
 *   token_endpoint: string, redirect_uri: string}} Pending
 */

/** The sessionStorage key of the sign-in under way. */
const PENDING_KEY = "rhr-oidc-pending";

/** Why a sign-in failed; `code` is stable (docs/reports.md), `message` a sentence. */
export class SignInError extends Error {
  /** @param {"network"|"discovery"|"provider"|"state"|"issuer"|"token"|"nonce"} code @param {string} message */
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

/** @param {Uint8Array} bytes @returns {string} base64url without padding */
function base64url(bytes) {
  let text = "";
  for (const b of bytes) text += String.fromCharCode(b);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** 32 random bytes as base64url (43 characters): states, nonces and code verifiers. */
function random() {
  return base64url(crypto.getRandomValues(new Uint8Array(32)));
}

/** @param {string} verifier @returns {Promise<string>} the S256 code challenge */
async function challenge(verifier) {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier));
  return base64url(new Uint8Array(digest));
}

/**
 * The provider's discovery document; its `issuer` must be exactly the tenant's.
 * @param {string} issuer @returns {Promise<{authorization_endpoint: string, token_endpoint: string}>}
 */
async function discover(issuer) {
  const url = `${issuer.replace(/\/$/, "")}/.well-known/openid-configuration`;
  let document;
  try {
    const response = await fetch(url, { credentials: "omit", cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    document = await response.json();
  } catch {
    throw new SignInError("network", `The sign-in provider cannot be reached (${issuer}).`);
  }
  if (document.issuer !== issuer) {
    throw new SignInError("discovery",
      "The sign-in provider's discovery document names another issuer than the tenant's.");
  }
  return document;
}

/**
 * Starts signing in with `choice`: the browser leaves for the provider's authorization
 * endpoint and comes back to `redirectUri` (the page's own address, registered at the
 * provider). Resolves only if it fails before leaving.
 * @param {SignInChoice} choice @param {string} redirectUri @returns {Promise<void>}
 */
export async function beginSignIn(choice, redirectUri) {
  const provider = await discover(choice.issuer);
  /** @type {Pending} */
  const pending = {
    choice,
    state: random(),
    nonce: random(),
    verifier: random(),
    token_endpoint: provider.token_endpoint,
    redirect_uri: redirectUri,
  };
  const params = new URLSearchParams({
    response_type: "code",
    client_id: choice.client_id,
    redirect_uri: redirectUri,
    scope: choice.scopes.join(" "),
    state: pending.state,
    nonce: pending.nonce,
    code_challenge: await challenge(pending.verifier),
    code_challenge_method: "S256",
  });
  if (choice.resource) params.set("resource", choice.resource);
  sessionStorage.setItem(PENDING_KEY, JSON.stringify(pending));
  location.assign(`${provider.authorization_endpoint}?${params}`);
}

/**
 * The claims of a JWT (not verified here: it came straight from the token endpoint over
 * TLS, which OpenID Connect Core §3.1.3.7 accepts for the code flow).
 * @param {string} jwt @returns {Record<string, unknown>}
 */
function claimsOf(jwt) {
  const part = jwt.split(".")[1] ?? "";
  const text = atob(part.replace(/-/g, "+").replace(/_/g, "/"));
  return JSON.parse(new TextDecoder().decode(Uint8Array.from(text, (c) => c.charCodeAt(0))));
}

/**
 * Finishes a sign-in if `url` is the provider's answer to one (it has `code`, `error` or
 * `state`): checks it, exchanges the code, and returns the access token and the tenant.
 * Returns null when `url` is no such answer. Either way the answer's parameters leave the
 * address bar (history.replaceState) and the sign-in under way is forgotten, so a reload
 * cannot replay it.
 * @param {URL} url @returns {Promise<{accessToken: string, choice: SignInChoice}|null>}
 */
export async function completeSignIn(url) {
  const answer = url.searchParams;
  if (!answer.has("code") && !answer.has("error") && !answer.has("state")) return null;
  const clean = new URL(url);
  for (const name of ["code", "state", "error", "error_description", "error_uri", "iss", "session_state"]) {
    clean.searchParams.delete(name);
  }
  history.replaceState(null, "", clean);
  const stored = sessionStorage.getItem(PENDING_KEY);
  sessionStorage.removeItem(PENDING_KEY);
  /** @type {Pending|null} */
  const pending = stored ? JSON.parse(stored) : null;
  if (!pending || answer.get("state") !== pending.state) {
    throw new SignInError("state",
      "The sign-in answer does not belong to a sign-in started in this tab (state mismatch); sign in again.");
  }
  // RFC 9207: the provider names itself in its answer; another one's answer is refused.
  if (answer.has("iss") && answer.get("iss") !== pending.choice.issuer) {
    throw new SignInError("issuer",
      "The sign-in answer came from another provider than the tenant's (issuer mismatch); sign in again.");
  }
  const error = answer.get("error");
  if (error) {
    const why = answer.get("error_description");
    throw new SignInError("provider", `The sign-in provider refused: ${why ? `${why} (${error})` : error}.`);
  }
  const form = new URLSearchParams({
    grant_type: "authorization_code",
    code: answer.get("code") ?? "",
    redirect_uri: pending.redirect_uri,
    client_id: pending.choice.client_id,
    code_verifier: pending.verifier,
  });
  if (pending.choice.resource) form.set("resource", pending.choice.resource);
  let response;
  let body;
  try {
    response = await fetch(pending.token_endpoint, {
      method: "POST",
      body: form,
      credentials: "omit",
      cache: "no-store",
    });
    body = await response.json();
  } catch {
    throw new SignInError("network", `The sign-in provider cannot be reached (${pending.choice.issuer}).`);
  }
  if (!response.ok || typeof body.access_token !== "string") {
    const why = body.error_description ?? body.error ?? `HTTP ${response.status}`;
    throw new SignInError("token", `The sign-in provider did not exchange the code: ${why}.`);
  }
  let claims;
  try {
    claims = claimsOf(body.id_token ?? "");
  } catch {
    claims = {};
  }
  const audience = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
  if (claims.nonce !== pending.nonce || claims.iss !== pending.choice.issuer
      || !audience.includes(pending.choice.client_id)) {
    throw new SignInError("nonce",
      "The sign-in provider's ID token does not belong to this sign-in (nonce mismatch); sign in again.");
  }
  return { accessToken: body.access_token, choice: pending.choice };
}
