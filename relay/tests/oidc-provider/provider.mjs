// A real OpenID Connect provider for the relay's integration tests (relay/tests/common/oidc.rs).
//
// It is panva's certified `oidc-provider`, configured for two things, over HTTPS on
// 127.0.0.1: issuing JWT access tokens to confidential clients through a real
// `client_credentials` grant, and signing people in from a browser page (public clients,
// authorization code with PKCE S256, the library's development login and consent forms;
// CORS for the page's origin), whose access tokens for a configured resource indicator are
// JWTs carrying the account's claims. Around it sits what the relay's tests of "keys by URL" need: signing keys held
// in a state folder (so a restart serves the same keys), rotation without a restart, bad key
// sets, a Cache-Control header, a wrong issuer in discovery, and request counters.
//
//   node provider.mjs --config CONFIG.json --state DIR --cert CERT.pem --key KEY.pem [--port N]
//
// stdout carries one `READY https://127.0.0.1:PORT` line, then one `REPLY {json}` line per
// command; stdin takes one JSON command per line (see `commands` below); the log goes to
// stderr. Without --port (or with 0) the port is ephemeral; a restart passes the old one.
// Only Node 18 features are used: Debian bookworm's `nodejs` is 18.20.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:https';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

// stdout is the control protocol's: the library's own notices (console.info and the like)
// go to stderr with the log.
for (const level of ['log', 'info', 'warn', 'debug']) console[level] = console.error;
const log = (...args) => console.error('[oidc-provider]', ...args);

const { values: args } = parseArgs({
  options: {
    config: { type: 'string' },
    state: { type: 'string' },
    cert: { type: 'string' },
    key: { type: 'string' },
    port: { type: 'string', default: '0' },
  },
});
for (const required of ['config', 'state', 'cert', 'key']) {
  if (!args[required]) {
    log(`--${required} is required`);
    process.exit(64);
  }
}

// The test's configuration (relay/tests/common/oidc.rs writes it):
//   { "audience": "remote-help-relay", "alg": "ES256", "access_token_ttl": 3600,
//     "clients": [ { "client_id": "...", "client_secret": "...", "claims": { ... } } ],
//     "accounts": { "alice": { ... } }, "resources": [ "urn:..." ] }
// Each client's `claims` are added to every access token it is granted by client
// credentials; each account's to every access token issued for it (any password signs in,
// as in the library's development forms). A resource indicator in `resources` gets JWT
// access tokens whose `aud` is the indicator itself. Public clients (browser pages) are
// added at run time (`add_public_client`), since their redirect URI names a port known only
// once the page's server listens.
const config = JSON.parse(readFileSync(args.config, 'utf8'));
const audience = config.audience ?? 'remote-help-relay';
const alg = config.alg ?? 'ES256';
const accessTokenTTL = config.access_token_ttl ?? 3600;
const claimsByClient = new Map(config.clients.map((c) => [c.client_id, c.claims ?? {}]));
const accounts = config.accounts ?? {};
const resources = new Set(config.resources ?? []);
const publicClients = [];

// Everything a restart must keep: the private keys (published, in order; `signing` is the
// one tokens are signed with) and how the key set is served. Written whole and renamed into
// place, so a killed provider leaves either the old state or the new one.
const statePath = join(args.state, 'state.json');
let state;
try {
  state = JSON.parse(readFileSync(statePath, 'utf8'));
} catch (e) {
  if (e.code !== 'ENOENT') throw e;
  const first = newKey();
  state = {
    keys: [first], signing: first.kid, jwks: 'good', maxAge: null, wrongIssuer: false,
  };
  saveState();
}

function saveState() {
  const tmp = `${statePath}.tmp`;
  writeFileSync(tmp, JSON.stringify(state, null, 2));
  renameSync(tmp, statePath);
}

// A new private signing key as a JWK, for the configured algorithm.
function newKey() {
  const kid = randomBytes(8).toString('hex');
  const pair = {
    ES256: () => generateKeyPairSync('ec', { namedCurve: 'P-256' }),
    RS256: () => generateKeyPairSync('rsa', { modulusLength: 2048 }),
    EdDSA: () => generateKeyPairSync('ed25519'),
  }[alg];
  if (!pair) throw new Error(`unsupported alg ${alg}`);
  return {
    ...pair().privateKey.export({ format: 'jwk' }), kid, alg, use: 'sig',
  };
}

// The bad key sets `jwks` can be switched to. The broken keys reuse the signing key's kid,
// so a relay that took them would lose the good key, not just gain a useless one.
function badJwks(kind) {
  const kid = state.signing;
  switch (kind) {
    case 'not-json':
      return { type: 'application/json', body: '{"keys": [ this is not JSON' };
    case 'rsa-1024': {
      const { publicKey } = generateKeyPairSync('rsa', { modulusLength: 1024 });
      const jwk = { ...publicKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };
      return { type: 'application/jwk-set+json', body: JSON.stringify({ keys: [jwk] }) };
    }
    case 'oct': {
      const jwk = {
        kty: 'oct', k: randomBytes(32).toString('base64url'), kid, alg: 'HS256', use: 'sig',
      };
      return { type: 'application/jwk-set+json', body: JSON.stringify({ keys: [jwk] }) };
    }
    case 'empty':
      return { type: 'application/jwk-set+json', body: '{"keys":[]}' };
    case 'server-error':
      return { status: 500, type: 'text/plain', body: 'internal error' };
    case 'oversized':
      // A well-formed set, 1 MiB long: more than a relay should read for a key set.
      return {
        type: 'application/jwk-set+json',
        body: JSON.stringify({ keys: [], padding: 'x'.repeat(1024 * 1024) }),
      };
    default:
      throw new Error(`unknown key set ${kind}`);
  }
}

const DISCOVERY = '/.well-known/openid-configuration';
const JWKS = '/jwks';
const counts = { jwks: 0, discovery: 0 };
let issuer; // known once the server listens (the port may be ephemeral)
let handle; // the request handler of the Provider serving now; replaced whole when the keys change

// A fresh Provider over the current keys. Changing keys builds a new one behind the same
// HTTPS server: no restart, no dropped listener, and the new instance's keystore is exactly
// `state.keys`.
function buildProvider() {
  const provider = new Provider(issuer, {
    jwks: { keys: state.keys },
    clients: [
      ...config.clients.map((c) => ({
        client_id: c.client_id,
        client_secret: c.client_secret,
        grant_types: ['client_credentials'],
        redirect_uris: [],
        response_types: [],
        token_endpoint_auth_method: 'client_secret_basic',
      })),
      // Browser pages: no secret, the code flow only, back to the page itself.
      ...publicClients.map((c) => ({
        client_id: c.client_id,
        application_type: 'web',
        grant_types: ['authorization_code'],
        response_types: ['code'],
        redirect_uris: [c.redirect_uri],
        token_endpoint_auth_method: 'none',
      })),
    ],
    // Client metadata must name an algorithm the provider has keys for.
    clientDefaults: { id_token_signed_response_alg: alg },
    // The login form's name is the account; its claims are the configured ones.
    findAccount: (ctx, id) => ({
      accountId: id,
      claims: () => ({ sub: id, ...(accounts[id] ?? {}) }),
    }),
    // Every public client must use PKCE, with S256 only.
    pkce: { required: () => true, methods: ['S256'] },
    // The token endpoint and discovery answer a page only from its own client's origin.
    clientBasedCORS: (ctx, origin, client) => client.redirectUris
      .some((uri) => new URL(uri).origin === origin),
    features: {
      // The library's own login and consent pages: any name, any password.
      devInteractions: { enabled: true },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // A grant without a `resource` parameter is for the relay.
        defaultResource: () => 'urn:remote-help-relay',
        // A code exchanged without naming the resource is for the one it was granted for.
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, indicator) => ({
          scope: 'relay',
          // A configured indicator is itself the audience; the default one is the relay's.
          audience: resources.has(indicator) ? indicator : audience,
          accessTokenTTL,
          accessTokenFormat: 'jwt',
          // The kid names the signing key outright, so a rotation takes effect for certain.
          jwt: { sign: { alg, kid: state.signing } },
        }),
      },
    },
    // Client credentials are JWTs here; the in-memory record needs a lifetime all the same.
    ttl: { ClientCredentials: accessTokenTTL },
    extraTokenClaims: (ctx, token) => (token.accountId
      ? accounts[token.accountId] : claimsByClient.get(token.clientId)),
    cookies: { keys: [randomBytes(32).toString('hex')] },
  });
  // Run after the provider's own routes, to dress their responses.
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.path === JWKS && state.maxAge !== null) {
      ctx.set('cache-control', `max-age=${state.maxAge}`);
    }
    if (ctx.path === DISCOVERY && state.wrongIssuer && ctx.status === 200) {
      ctx.body = { ...ctx.body, issuer: `${issuer}/not-this-one` };
    }
  });
  provider.on('server_error', (ctx, err) => log('server_error', err));
  provider.on('grant.error', (ctx, err) => log('grant.error', err.message));
  return provider;
}

function serve(provider) {
  handle = provider.callback();
}

const server = createServer({
  cert: readFileSync(args.cert),
  key: readFileSync(args.key),
});
server.on('request', (req, res) => {
  const path = new URL(req.url, 'https://x').pathname;
  // The Rust harness marks its own reads (finding the token endpoint): the counts are the
  // relay's requests (and the test's) alone.
  if (!req.headers['x-rhr-test-harness']) {
    if (path === JWKS) counts.jwks += 1;
    if (path === DISCOVERY) counts.discovery += 1;
  }
  if (path === JWKS && state.jwks !== 'good') {
    const bad = badJwks(state.jwks);
    const headers = { 'content-type': bad.type };
    if (state.maxAge !== null) headers['cache-control'] = `max-age=${state.maxAge}`;
    res.writeHead(bad.status ?? 200, headers);
    res.end(bad.body);
    return;
  }
  handle(req, res);
});

// The control commands, one JSON object per stdin line; each answers one JSON line with
// `ok` (and `error` when not ok).
const commands = {
  // Add a key and sign with it from now on; the old ones stay published (the overlap).
  add_key() {
    const key = newKey();
    state.keys.unshift(key);
    state.signing = key.kid;
    return { kid: key.kid };
  },
  // Stop publishing a key. The signing key cannot be retired: add its successor first.
  retire_key({ kid }) {
    if (kid === state.signing) throw new Error(`${kid} signs tokens now: add a key first`);
    const before = state.keys.length;
    state.keys = state.keys.filter((k) => k.kid !== kid);
    if (state.keys.length === before) throw new Error(`no key ${kid}`);
    return {};
  },
  // Serve `good` (the provider's own key set) or a bad one (see badJwks).
  jwks({ mode }) {
    if (mode !== 'good') badJwks(mode); // throws on an unknown kind
    state.jwks = mode;
    return {};
  },
  // `Cache-Control: max-age=SECS` on the key set, or (null) the provider's own headers.
  max_age({ secs }) {
    state.maxAge = secs;
    return {};
  },
  // Discovery names another issuer than the one serving it (a misconfiguration).
  wrong_issuer({ on }) {
    state.wrongIssuer = on;
    return {};
  },
  // A public client for a browser page at `redirect_uri` (the code flow with PKCE).
  add_public_client({ client_id, redirect_uri }) {
    publicClients.push({ client_id, redirect_uri });
    return {};
  },
  counts() {
    return { ...counts };
  },
  keys() {
    return { signing: state.signing, published: state.keys.map((k) => k.kid) };
  },
  // Stop listening and close every connection, answer the final counts, exit.
  async stop() {
    await new Promise((resolve) => {
      server.close(resolve);
      server.closeAllConnections();
    });
    return { ...counts, stopping: true };
  },
};

function reply(message) {
  process.stdout.write(`REPLY ${JSON.stringify(message)}\n`);
}

server.listen(Number(args.port), '127.0.0.1', () => {
  issuer = `https://127.0.0.1:${server.address().port}`;
  serve(buildProvider());
  log(`node ${process.version}, issuer ${issuer}, signing key ${state.signing}, keys ${state.keys.map((k) => k.kid)}`);
  process.stdout.write(`READY ${issuer}\n`);
});
server.on('error', (e) => {
  log('cannot listen:', e.message);
  process.exit(69);
});

// Commands run one at a time, in order: each reply follows its command.
let queue = Promise.resolve();
createInterface({ input: process.stdin }).on('line', (line) => {
  queue = queue.then(async () => {
    let command;
    try {
      command = JSON.parse(line);
      const handler = commands[command.cmd];
      if (!handler) throw new Error(`unknown command ${command.cmd}`);
      const result = await handler(command);
      if (['add_key', 'retire_key', 'add_public_client'].includes(command.cmd)) {
        serve(buildProvider());
      }
      if (command.cmd !== 'counts' && command.cmd !== 'keys' && command.cmd !== 'stop') saveState();
      reply({ ok: true, ...result });
      if (command.cmd === 'stop') process.exit(0);
    } catch (e) {
      log(`command ${line}: ${e.message}`);
      reply({ ok: false, error: e.message });
    }
  });
}).on('close', () => {
  // The test is gone (its end of the pipe closed): so is the provider.
  process.exit(0);
});
