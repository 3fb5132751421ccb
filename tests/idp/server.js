// Test identity provider for mcp-authz end-to-end tests.
//
//   node tests/idp/server.js <port>
//
// Starts oidc-provider on http://127.0.0.1:<port> (that is also the issuer) and prints
// `IDP READY <issuer>` on stdout once it accepts connections.
//
// What it offers:
// - Open dynamic client registration (RFC 7591), public clients (`none`) with PKCE, loopback
//   redirect URIs on any port (native clients).
// - The client-credentials grant for the pre-registered confidential clients below.
// - Resource indicators (RFC 8707): every token request must name a `resource` under
//   http://127.0.0.1 or http://localhost; the access token is then an RFC 9068 JWT
//   (`typ: at+jwt`, `aud` = resource) signed with RS256 (or ES256 for clients that ask).
// - The devInteractions login form: any login name is the subject; names starting with
//   `admin` get `groups: ["admins"]`, others `groups: ["users"]`.
//
// Environment:
// - IDP_CLIENTS: JSON list replacing the pre-registered clients. Each entry:
//   {"client_id", "client_secret", "scope" (resource scopes it may get),
//    "claims" (extra access-token claims), "access_token_alg" ("RS256" | "ES256")}.
// - IDP_ACCESS_TOKEN_TTL: access-token lifetime in seconds (default 3600).
//
// - IDP_OPTIONS: JSON object that makes this provider behave like a given vendor's (every key is
//   optional; without it the provider is the standards-perfect one described above). See
//   tests/idp/README.md for what each key reproduces:
//   {"issuer_path": "/realms/mcp" (issuer http://127.0.0.1:<port><path>; "/" gives a trailing slash),
//    "registration": false (no registration endpoint),
//    "public_clients": [{"client_id", "redirect_uris"}] (pre-registered public auth-code clients),
//    "resource_indicators": false (the `resource` parameter is ignored: every token's `aud` is `audience`),
//    "audience": "api://..." | ["a", "b"] (that fixed audience),
//    "accepted_resource": "https://..." (with resource_indicators false: any other `resource` is invalid_target),
//    "scope_prefix": "api://<app>/" (scopes are asked for as <prefix><name>; tokens carry <name>),
//    "scope_claims": {"scp": "array"} (claim name -> "string" | "array"; replaces `scope`),
//    "token_typ": "JWT" | null (the JOSE typ; null leaves it out; default at+jwt),
//    "rename_claims": {"client_id": "azp"} (null drops the claim),
//    "claims": {"tid": "..."} (extra claims on every access token)}
//
// Token exchange (RFC 8693), registered with oidc-provider's `registerGrantType`: a client whose
// entry has `"token_exchange": true` (by default `mcp-authz`, secret `mcp-authz-secret`) may trade
// an access token of this issuer (`subject_token`, verified here) for one whose `aud` is the
// `resource` (or `audience`) asked for and whose `sub` is the subject token's; `act.sub` names
// the exchanging client. Each exchange prints `TOKEN EXCHANGE {"client","sub","aud"}` on stdout.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { argv, env, exit, stdout } from 'node:process';

import { createLocalJWKSet, jwtVerify } from 'jose';
import Provider, { errors } from 'oidc-provider';

const port = Number.parseInt(argv[2] ?? '', 10);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('usage: node server.js <port>');
  exit(2);
}
const OPTIONS = env.IDP_OPTIONS ? JSON.parse(env.IDP_OPTIONS) : {};
const ISSUER_PATH = OPTIONS.issuer_path ?? '';
if (ISSUER_PATH !== '' && !ISSUER_PATH.startsWith('/')) {
  console.error('IDP_OPTIONS.issuer_path must start with /');
  exit(2);
}
// Where oidc-provider is mounted ('' for an issuer at the root, with or without its trailing slash).
const MOUNT = ISSUER_PATH.replace(/\/+$/, '');
const issuer = `http://127.0.0.1:${port}${ISSUER_PATH}`;
const RESOURCE_INDICATORS = OPTIONS.resource_indicators ?? true;
const FIXED_AUDIENCE = OPTIONS.audience;
if (!RESOURCE_INDICATORS && !FIXED_AUDIENCE) {
  console.error('IDP_OPTIONS: resource_indicators false needs an audience');
  exit(2);
}
// With resource indicators off, the resource server every token is for, whatever `resource` says.
const DEFAULT_INDICATOR = 'urn:mcp-authz-test-idp:api';
const SCOPE_PREFIX = OPTIONS.scope_prefix ?? '';
const SCOPE_CLAIMS = OPTIONS.scope_claims ?? { scope: 'string' };
const TOKEN_TYP = OPTIONS.token_typ === undefined ? 'at+jwt' : OPTIONS.token_typ;
const RENAME_CLAIMS = OPTIONS.rename_claims ?? {};
const STATIC_CLAIMS = OPTIONS.claims ?? {};

const RESOURCE_SCOPES = ['tools:read', 'tools:write', 'prompts:read', 'resources:read'];
const prefixed = (scope) => scope.split(' ').filter(Boolean).map((s) => SCOPE_PREFIX + s).join(' ');
const ACCESS_TOKEN_TTL = Number.parseInt(env.IDP_ACCESS_TOKEN_TTL ?? '3600', 10);

const DEFAULT_CLIENTS = [
  { client_id: 'm2m-reader', client_secret: 'm2m-reader-secret', scope: 'tools:read' },
  { client_id: 'm2m-writer', client_secret: 'm2m-writer-secret', scope: 'tools:read tools:write' },
  {
    client_id: 'm2m-admin',
    client_secret: 'm2m-admin-secret',
    scope: RESOURCE_SCOPES.join(' '),
    claims: { groups: ['admins'] },
  },
  {
    client_id: 'm2m-es256',
    client_secret: 'm2m-es256-secret',
    scope: 'tools:read',
    access_token_alg: 'ES256',
  },
  {
    client_id: 'mcp-authz',
    client_secret: 'mcp-authz-secret',
    scope: 'downstream:read downstream:write',
    token_exchange: true,
  },
];

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';

const clientSpecs = env.IDP_CLIENTS ? JSON.parse(env.IDP_CLIENTS) : DEFAULT_CLIENTS;
// client_id -> { scope, claims, alg } for the pre-registered machine clients.
const machineClients = new Map(
  clientSpecs.map((c) => [
    c.client_id,
    {
      scope: c.scope ?? '',
      claims: c.claims ?? {},
      alg: c.access_token_alg ?? 'RS256',
      tokenExchange: c.token_exchange === true,
    },
  ]),
);

function signingKeys() {
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  const tag = randomBytes(4).toString('hex');
  return {
    keys: [
      { ...rsa, kid: `rsa-${tag}`, alg: 'RS256', use: 'sig' },
      { ...ec, kid: `ec-${tag}`, alg: 'ES256', use: 'sig' },
    ],
  };
}

const KEYS = signingKeys();
// The public halves, to verify subject tokens presented for exchange.
const PUBLIC_KEYS = createLocalJWKSet({
  keys: KEYS.keys.map(({ d, p, q, dp, dq, qi, ...pub }) => pub),
});

function isLocalResource(indicator) {
  const url = URL.parse(indicator);
  return (
    url !== null
    && url.protocol === 'http:'
    && (url.hostname === '127.0.0.1' || url.hostname === 'localhost')
    && url.hash === ''
  );
}

function groupsFor(login) {
  return login.startsWith('admin') ? ['admins'] : ['users'];
}

// The vendor's token shape (IDP_OPTIONS): scope claims, JOSE typ, renamed and extra claims.
function shapeToken(_ctx, _token, jwt) {
  const payload = jwt.payload;
  const names = (payload.scope ?? '')
    .split(' ')
    .filter(Boolean)
    .map((s) => (s.startsWith(SCOPE_PREFIX) ? s.slice(SCOPE_PREFIX.length) : s));
  delete payload.scope;
  for (const [claim, form] of Object.entries(SCOPE_CLAIMS)) {
    if (names.length > 0) payload[claim] = form === 'array' ? names : names.join(' ');
  }
  for (const [from, to] of Object.entries(RENAME_CLAIMS)) {
    if (!(from in payload)) continue;
    if (to) payload[to] = payload[from];
    delete payload[from];
  }
  if (!RESOURCE_INDICATORS) payload.aud = FIXED_AUDIENCE;
  Object.assign(payload, STATIC_CLAIMS);
  if (TOKEN_TYP !== 'at+jwt') jwt.header = { ...jwt.header, typ: TOKEN_TYP ?? undefined };
}

const publicClients = (OPTIONS.public_clients ?? []).map((c) => ({
  client_id: c.client_id,
  redirect_uris: c.redirect_uris,
  application_type: 'native',
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
  token_endpoint_auth_method: 'none',
}));

const configuration = {
  clients: [
    ...clientSpecs.map((c) => ({
      client_id: c.client_id,
      client_secret: c.client_secret,
      grant_types: c.token_exchange ? ['client_credentials', TOKEN_EXCHANGE] : ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
    })),
    ...publicClients,
  ],
  clientDefaults: {
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
    id_token_signed_response_alg: 'RS256',
  },
  clientBasedCORS: () => true,
  cookies: { keys: [randomBytes(32).toString('hex')] },
  jwks: KEYS,
  // Only the code flow: no implicit or hybrid response types.
  responseTypes: ['code'],
  pkce: { required: () => true },
  scopes: ['openid', 'offline_access'],
  claims: { openid: ['sub'] },
  async findAccount(_ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        return { sub };
      },
    };
  },
  // Under a mounted issuer path the login pages live under it too.
  ...(MOUNT && { interactions: { url: async (_ctx, interaction) => `${MOUNT}/interaction/${interaction.uid}` } }),
  formats: { customizers: { jwt: shapeToken } },
  features: {
    devInteractions: { enabled: true },
    registration: {
      enabled: OPTIONS.registration ?? true,
      initialAccessToken: false,
      issueRegistrationAccessToken: false,
    },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // The resource indicator is required: without one there is no token.
      async defaultResource(_ctx, _client, oneOf) {
        if (oneOf) return oneOf;
        if (!RESOURCE_INDICATORS) return DEFAULT_INDICATOR;
        throw new errors.InvalidTarget('a resource indicator (RFC 8707) is required');
      },
      // A refresh or code exchange without `resource` keeps the one granted.
      async useGrantedResource() {
        return true;
      },
      async getResourceServerInfo(_ctx, resourceIndicator, client) {
        if (RESOURCE_INDICATORS && !isLocalResource(resourceIndicator)) {
          throw new errors.InvalidTarget('resource must be an http URL on 127.0.0.1 or localhost');
        }
        if (
          !RESOURCE_INDICATORS
          && OPTIONS.accepted_resource
          && ![DEFAULT_INDICATOR, OPTIONS.accepted_resource].includes(resourceIndicator)
        ) {
          // Entra ID's AADSTS9010010: a `resource` other than the scopes' own API is refused.
          throw new errors.InvalidTarget('the resource parameter does not match the requested scopes');
        }
        const machine = machineClients.get(client.clientId);
        return {
          // (oidc-provider takes one audience here; shapeToken writes a list of them)
          audience: RESOURCE_INDICATORS ? resourceIndicator : [FIXED_AUDIENCE].flat()[0],
          accessTokenFormat: 'jwt',
          accessTokenTTL: ACCESS_TOKEN_TTL,
          scope: prefixed(machine ? machine.scope : RESOURCE_SCOPES.join(' ')),
          jwt: { sign: { alg: machine ? machine.alg : 'RS256' } },
        };
      },
    },
  },
  async extraTokenClaims(_ctx, token) {
    if (token.gty === 'token_exchange') {
      return { act: { sub: token.clientId } };
    }
    if (token.kind === 'ClientCredentials') {
      return machineClients.get(token.clientId)?.claims;
    }
    if (token.accountId) {
      return { groups: groupsFor(token.accountId) };
    }
    return undefined;
  },
  ttl: {
    AccessToken: () => ACCESS_TOKEN_TTL,
    ClientCredentials: () => ACCESS_TOKEN_TTL,
    AuthorizationCode: 60,
    Grant: 3600,
    IdToken: 3600,
    Interaction: 600,
    RefreshToken: 86400,
    Session: 3600,
  },
};

const provider = new Provider(issuer, configuration);
provider.on('server_error', (_ctx, err) => {
  console.error('server_error', err);
});

// oidc-provider refuses a registration whose `scope` names anything but its own static
// scopes (openid, offline_access), while the MCP SDK registers with the scopes the resource
// asked for (tools:read ...), which are resource-server scopes here. RFC 7591 §3.2.1 lets the
// server replace requested metadata: drop `scope` from a registration request, so the client
// is registered without a scope restriction (what it gets is decided per resource).
provider.use(async (ctx, next) => {
  if (ctx.method === 'POST' && ctx.path === '/reg' && ctx.is('application/json')) {
    const chunks = [];
    for await (const chunk of ctx.req) chunks.push(chunk);
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch {
      ctx.status = 400;
      ctx.body = { error: 'invalid_client_metadata', error_description: 'body is not JSON' };
      return;
    }
    if (body && typeof body === 'object') delete body.scope;
    ctx.request.body = body;
  }
  await next();
});

// RFC 8693 token exchange for the clients that may use it (see the header comment).
async function tokenExchange(ctx) {
  const { client, params } = ctx.oidc;
  if (!machineClients.get(client.clientId)?.tokenExchange) {
    throw new errors.UnauthorizedClient('this client may not exchange tokens');
  }
  if (params.subject_token_type !== ACCESS_TOKEN_TYPE || !params.subject_token) {
    throw new errors.InvalidRequest(`subject_token (${ACCESS_TOKEN_TYPE}) is required`);
  }
  let subject;
  try {
    ({ payload: subject } = await jwtVerify(params.subject_token, PUBLIC_KEYS, { issuer, typ: 'at+jwt' }));
  } catch {
    throw new errors.InvalidGrant('subject_token is not a valid access token of this issuer');
  }
  const asked = [params.resource, params.audience].flat().filter(Boolean);
  if (asked.length === 0 || new Set(asked).size !== 1) {
    throw new errors.InvalidTarget('name exactly one downstream API (resource and/or audience)');
  }
  const target = asked[0];
  const info = await configuration.features.resourceIndicators.getResourceServerInfo(ctx, target, client);
  const allowed = new Set(info.scope.split(' '));
  const scope = (params.scope ?? '').split(' ').filter((s) => allowed.has(s)).join(' ') || undefined;
  const token = new provider.AccessToken({
    accountId: subject.sub,
    client,
    gty: 'token_exchange',
    scope,
  });
  token.resourceServer = new provider.ResourceServer(target, info);
  const value = await token.save();
  stdout.write(`TOKEN EXCHANGE ${JSON.stringify({ client: client.clientId, sub: subject.sub, aud: target })}\n`);
  ctx.body = {
    access_token: value,
    issued_token_type: ACCESS_TOKEN_TYPE,
    token_type: 'Bearer',
    expires_in: token.expiration,
    scope,
  };
}

provider.registerGrantType(
  TOKEN_EXCHANGE,
  tokenExchange,
  ['subject_token', 'subject_token_type', 'requested_token_type', 'audience', 'resource', 'scope', 'actor_token', 'actor_token_type'],
  ['audience', 'resource'],
);

// oidc-provider behind a plain HTTP server: at the root, or mounted under the issuer's path
// (oidc-provider reads the mount path from `originalUrl`); anything outside the mount is a 404.
const handle = provider.callback();
const server = createServer((req, res) => {
  if (MOUNT === '') return handle(req, res);
  const rest = req.url.startsWith(MOUNT) ? req.url.slice(MOUNT.length) : null;
  if (rest === null || !(rest === '' || rest.startsWith('/') || rest.startsWith('?'))) {
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end('{"error":"not_found"}');
    return undefined;
  }
  req.originalUrl = req.url;
  req.url = rest.startsWith('/') ? rest : `/${rest}`;
  return handle(req, res);
});
server.listen(port, '127.0.0.1', () => {
  stdout.write(`IDP READY ${issuer}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close();
    server.closeAllConnections?.();
    exit(0);
  });
}
