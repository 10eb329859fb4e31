/**
 * Registry credentials and the two challenge schemes of the distribution spec: `Basic` (send the
 * user's credentials) and `Bearer` (trade them, or nothing, for a token at the realm's endpoint).
 */
import { readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { LayerfsError, isErrno } from '../../common/errors.js';

export interface Credentials {
  username: string;
  password: string;
}

export interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

/** `--creds user:pass` */
export function parseCreds(s: string): Credentials {
  const i = s.indexOf(':');
  if (i <= 0) throw new LayerfsError('EUSAGE', '--creds', 'expected USER:PASSWORD');
  return { username: s.slice(0, i), password: s.slice(i + 1) };
}

/** The host part of a docker config `auths` key (`https://host/v1/` -> `host`). */
function keyHost(key: string): string {
  return key.replace(/^[a-z]+:\/\//i, '').replace(/\/.*$/, '').toLowerCase();
}

/**
 * Credentials for `registry` from a docker config.json: `$DOCKER_CONFIG/config.json`, else
 * `~/.docker/config.json`, `auths[host].auth` (base64 `user:pass`). docker.io is keyed as
 * `https://index.docker.io/v1/`. Credential helpers are not run.
 */
export async function dockerConfigCreds(registry: string, env: NodeJS.ProcessEnv = process.env): Promise<Credentials | null> {
  const dir = env.DOCKER_CONFIG ?? path.join(env.HOME ?? os.homedir(), '.docker');
  const file = path.join(dir, 'config.json');
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if (isErrno(err, 'ENOENT') || isErrno(err, 'ENOTDIR')) return null;
    throw err;
  }
  let cfg: { auths?: Record<string, { auth?: string; username?: string; password?: string }> };
  try {
    cfg = JSON.parse(text) as typeof cfg;
  } catch (err) {
    throw new LayerfsError('EAUTH', file, `not valid JSON: ${(err as Error).message}`);
  }
  const want = new Set([registry.toLowerCase()]);
  if (registry === 'docker.io') ['index.docker.io', 'registry-1.docker.io'].forEach((h) => want.add(h));
  for (const [key, entry] of Object.entries(cfg.auths ?? {})) {
    if (!want.has(keyHost(key))) continue;
    if (entry.auth) {
      const dec = Buffer.from(entry.auth, 'base64').toString('utf8');
      const i = dec.indexOf(':');
      if (i > 0) return { username: dec.slice(0, i), password: dec.slice(i + 1) };
      throw new LayerfsError('EAUTH', `${file} auths[${key}]`, 'auth is not base64 of USER:PASSWORD');
    }
    if (entry.username && entry.password) return { username: entry.username, password: entry.password };
  }
  return null;
}

/** Parse a WWW-Authenticate header: `Bearer realm="...",service="...",scope="..."` (several challenges allowed). */
export function parseChallenges(header: string): Challenge[] {
  const out: Challenge[] = [];
  const param = /\s*([\w-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*(?:,|$)/y;
  const scheme = /[\s,]*([A-Za-z][\w-]*)(?:\s+|$)/y;
  let cur: Challenge | null = null;
  let i = 0;
  while (i < header.length) {
    param.lastIndex = i;
    const p = cur ? param.exec(header) : null;
    if (p && cur) {
      cur.params[p[1]!.toLowerCase()] = p[2] !== undefined ? p[2].replace(/\\(.)/g, '$1') : (p[3] ?? '');
      i = param.lastIndex;
      continue;
    }
    scheme.lastIndex = i;
    const m = scheme.exec(header);
    if (!m) break;
    cur = { scheme: m[1]!.toLowerCase(), params: {} };
    out.push(cur);
    i = scheme.lastIndex;
  }
  return out;
}

export function basicHeader(c: Credentials): string {
  return 'Basic ' + Buffer.from(`${c.username}:${c.password}`).toString('base64');
}
