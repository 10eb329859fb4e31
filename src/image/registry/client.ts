/**
 * A client for the OCI distribution API (pull side): manifests with content negotiation, blobs as
 * streams, auth challenges (Basic, Bearer) and redirects. Built on node:http/https with keep-alive
 * agents whose `maxSockets` bounds the connections per host, so callers can start as many blob
 * requests as they like and at most `maxConnections` run at once; response bodies are plain Node
 * Readables that go straight into the layer applier.
 */
import http from 'node:http';
import https from 'node:https';
import { LayerfsError } from '../../common/errors.js';
import { logger } from '../../common/log.js';
import { sha256Digest } from '../digest.js';
import { MT_INDEX, MT_MANIFEST } from '../source.js';
import { basicHeader, parseChallenges, type Credentials } from './auth.js';
import type { ImageRef } from './reference.js';

export interface ClientOptions {
  /** Plain HTTP instead of HTTPS. */
  insecure?: boolean;
  creds?: Credentials | null;
  /** Connections per host (default 3). */
  maxConnections?: number;
  /** Idle time on a connection before a request fails (default 60 s; env LAYERFS_REGISTRY_TIMEOUT_MS). */
  timeoutMs?: number;
}

export interface FetchedManifest {
  body: Buffer;
  mediaType: string;
  digest: string;
}

const MANIFEST_LIMIT = 8 << 20;
const REDIRECTS = [301, 302, 303, 307, 308];
const USER_AGENT = 'layerfs/0.1';

async function readBody(res: http.IncomingMessage, limit: number, what: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of res as AsyncIterable<Buffer>) {
    n += c.length;
    if (n > limit) {
      res.destroy();
      throw new LayerfsError('EREGISTRY', what, `response larger than ${limit} bytes`);
    }
    chunks.push(c);
  }
  return Buffer.concat(chunks);
}

/** The distribution spec's error body, `{"errors":[{"code","message"}]}`, as one line. */
function errorText(body: Buffer): string {
  try {
    const doc = JSON.parse(body.toString('utf8')) as { errors?: { code?: string; message?: string }[] };
    if (Array.isArray(doc.errors) && doc.errors.length) return doc.errors.map((e) => [e.code, e.message].filter(Boolean).join(': ')).join('; ');
  } catch {
    /* not JSON */
  }
  return body.toString('utf8').trim().slice(0, 200);
}

export class RegistryClient {
  readonly ref: ImageRef;
  readonly base: URL;
  private readonly agents: { http: http.Agent; https: https.Agent };
  private readonly creds: Credentials | null;
  private readonly timeoutMs: number;
  private authorization: string | null = null;
  /** Requests (of any kind) sent, for tests and progress. */
  requests = 0;

  constructor(ref: ImageRef, opts: ClientOptions = {}) {
    this.ref = ref;
    this.base = new URL(`${opts.insecure ? 'http' : 'https'}://${ref.endpoint}`);
    const maxSockets = Math.max(1, opts.maxConnections ?? 3);
    const agentOpts = { keepAlive: true, maxSockets, maxFreeSockets: maxSockets, scheduling: 'fifo' as const };
    this.agents = { http: new http.Agent(agentOpts), https: new https.Agent(agentOpts) };
    this.creds = opts.creds ?? null;
    this.timeoutMs = opts.timeoutMs ?? (Number(process.env.LAYERFS_REGISTRY_TIMEOUT_MS) || 60_000);
  }

  close(): void {
    this.agents.http.destroy();
    this.agents.https.destroy();
  }

  private repoPath(kind: 'manifests' | 'blobs', ref: string): string {
    return `/v2/${this.ref.repository}/${kind}/${ref}`;
  }

  /** One HTTP GET, no redirects or auth handling. Connection failures become EREGISTRY. */
  private send(url: URL, headers: Record<string, string>, signal?: AbortSignal): Promise<http.IncomingMessage> {
    this.requests++;
    const mod = url.protocol === 'http:' ? http : https;
    const agent = url.protocol === 'http:' ? this.agents.http : this.agents.https;
    return new Promise((resolve, reject) => {
      const req = mod.request(url, { method: 'GET', headers: { 'User-Agent': USER_AGENT, ...headers }, agent, ...(signal ? { signal } : {}) }, (res) => {
        res.setTimeout(this.timeoutMs, () => res.destroy(new Error(`no data for ${this.timeoutMs / 1000}s`)));
        resolve(res);
      });
      req.setTimeout(this.timeoutMs, () => req.destroy(new Error(`no response for ${this.timeoutMs / 1000}s`)));
      req.on('error', (err: NodeJS.ErrnoException) => {
        if (err.name === 'AbortError') return reject(err);
        const why =
          url.protocol === 'https:' && /wrong version number|EPROTO|packet length too long/i.test(`${err.code} ${err.message}`)
            ? 'TLS handshake failed (a plain-HTTP registry? use --insecure)'
            : `${err.code ?? ''} ${err.message}`.replace(/\s+/g, ' ').trim();
        reject(new LayerfsError('EREGISTRY', `registry ${url.host}`, `cannot reach ${url.protocol}//${url.host}: ${why}`, { cause: err }));
      });
      req.end();
    });
  }

  /** GET a registry path, answering auth challenges once and following redirects (no credentials sent off-host). */
  async get(pathname: string, what: string, headers: Record<string, string> = {}, signal?: AbortSignal): Promise<http.IncomingMessage> {
    let url = new URL(pathname, this.base);
    let answered = false;
    for (let hop = 0; hop < 10; hop++) {
      const onRegistry = url.host === this.base.host;
      const h = { ...headers, ...(onRegistry && this.authorization ? { Authorization: this.authorization } : {}) };
      const res = await this.send(url, h, signal);
      const status = res.statusCode ?? 0;
      if (status === 401 && onRegistry) {
        const challenge = String(res.headers['www-authenticate'] ?? '');
        res.resume();
        if (answered || !challenge) {
          throw new LayerfsError(
            'EAUTH',
            what,
            this.creds ? `the registry refused the credentials for ${this.ref.registry}` : `the registry requires authentication: give --creds USER:PASS or log in (docker config.json)`,
          );
        }
        answered = true;
        await this.answer(challenge, what, signal);
        continue;
      }
      if (REDIRECTS.includes(status) && res.headers.location) {
        res.resume();
        url = new URL(res.headers.location, url);
        continue;
      }
      if (status < 200 || status > 299) {
        const body = await readBody(res, 64 << 10, what).catch(() => Buffer.alloc(0));
        const code = status === 404 ? 'EIMAGENOTFOUND' : status === 403 ? 'EAUTH' : 'EREGISTRY';
        throw new LayerfsError(code, what, `HTTP ${status} from ${url.host}${body.length ? `: ${errorText(body)}` : ''}`);
      }
      return res;
    }
    throw new LayerfsError('EREGISTRY', what, 'too many redirects');
  }

  /** Answer a WWW-Authenticate challenge: a Bearer token from the realm, or Basic credentials. */
  private async answer(header: string, what: string, signal?: AbortSignal): Promise<void> {
    const challenges = parseChallenges(header);
    const bearer = challenges.find((c) => c.scheme === 'bearer');
    if (bearer) {
      const realm = bearer.params.realm;
      if (!realm) throw new LayerfsError('EAUTH', what, `bearer challenge without a realm: ${header}`);
      const u = new URL(realm);
      if (bearer.params.service) u.searchParams.set('service', bearer.params.service);
      u.searchParams.set('scope', bearer.params.scope ?? `repository:${this.ref.repository}:pull`);
      logger().debug({ realm: u.origin + u.pathname }, 'fetching a registry token');
      const res = await this.send(u, this.creds ? { Authorization: basicHeader(this.creds) } : {}, signal);
      const body = await readBody(res, 1 << 20, 'token');
      if (res.statusCode === 401 || res.statusCode === 403) {
        throw new LayerfsError('EAUTH', what, this.creds ? `the token service ${u.host} refused the credentials` : `the token service ${u.host} requires credentials: give --creds USER:PASS`);
      }
      if ((res.statusCode ?? 0) < 200 || (res.statusCode ?? 0) > 299) throw new LayerfsError('EAUTH', what, `token service ${u.host}: HTTP ${res.statusCode}: ${errorText(body)}`);
      let tok: { token?: string; access_token?: string };
      try {
        tok = JSON.parse(body.toString('utf8')) as typeof tok;
      } catch {
        throw new LayerfsError('EAUTH', what, `token service ${u.host} sent no JSON`);
      }
      const t = tok.token ?? tok.access_token;
      if (!t) throw new LayerfsError('EAUTH', what, `token service ${u.host} sent no token`);
      this.authorization = `Bearer ${t}`;
      return;
    }
    if (challenges.some((c) => c.scheme === 'basic')) {
      if (!this.creds) throw new LayerfsError('EAUTH', what, `the registry requires authentication: give --creds USER:PASS or log in (docker config.json)`);
      this.authorization = basicHeader(this.creds);
      return;
    }
    throw new LayerfsError('EAUTH', what, `unsupported auth challenge: ${header}`);
  }

  /** Fetch a manifest or index by tag or digest, negotiating OCI and Docker schema 2 types; checked against its digest. */
  async getManifest(reference: string): Promise<FetchedManifest> {
    const what = `manifest ${this.ref.repository}:${reference}`.replace(':sha256:', '@sha256:');
    const res = await this.get(this.repoPath('manifests', reference), what, { Accept: [...MT_MANIFEST, ...MT_INDEX].join(', ') });
    const body = await readBody(res, MANIFEST_LIMIT, what);
    const digest = sha256Digest(body);
    if (reference.startsWith('sha256:') && digest !== reference) throw new LayerfsError('EDIGEST', what, `content has digest ${digest}`);
    const claimed = res.headers['docker-content-digest'];
    if (typeof claimed === 'string' && claimed.startsWith('sha256:') && claimed !== digest) {
      throw new LayerfsError('EDIGEST', what, `registry says ${claimed} but the content has digest ${digest}`);
    }
    let mediaType = String(res.headers['content-type'] ?? '').split(';')[0]!.trim();
    try {
      const doc = JSON.parse(body.toString('utf8')) as { mediaType?: string; schemaVersion?: number };
      if (doc.mediaType) mediaType = doc.mediaType;
      if (doc.schemaVersion === 1) throw new LayerfsError('EBADIMAGE', what, 'Docker schema 1 manifests are not supported');
    } catch (err) {
      if (err instanceof LayerfsError) throw err;
      throw new LayerfsError('EBADIMAGE', what, 'not valid JSON');
    }
    return { body, mediaType, digest };
  }

  /** A small blob (the config) in memory, checked against its digest. */
  async readBlob(digest: string, what: string, limit = 32 << 20): Promise<Buffer> {
    const res = await this.get(this.repoPath('blobs', digest), what);
    const body = await readBody(res, limit, what);
    const got = sha256Digest(body);
    if (got !== digest) throw new LayerfsError('EDIGEST', `${what} blob ${digest}`, `content has digest ${got}`);
    return body;
  }

  /** A blob as a stream (the caller verifies it while consuming it). */
  openBlob(digest: string, what: string, signal?: AbortSignal): Promise<http.IncomingMessage> {
    return this.get(this.repoPath('blobs', digest), what, {}, signal);
  }
}
