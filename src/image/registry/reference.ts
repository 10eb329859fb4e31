import { LayerfsError } from '../../common/errors.js';
import { normalizeName } from '../refs.js';

/** A parsed image reference: `[host[:port]/]repo/path[:tag][@sha256:...]`, docker's rules for the host part. */
export interface ImageRef {
  /** Host (and port) as named in the reference, e.g. `127.0.0.1:5000`, `docker.io`. */
  registry: string;
  /** Host the HTTP requests go to (`docker.io` -> `registry-1.docker.io`). */
  endpoint: string;
  repository: string;
  tag: string | null;
  digest: string | null;
  /** What we ask the registry for: the digest when given, else the tag. */
  reference: string;
  /** The name the pulled image gets in the store (the reference as given, with `:latest` added when bare). */
  name: string;
}

const REPO_PART = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const DIGEST = /^sha256:[0-9a-f]{64}$/;

export function parseRef(input: string): ImageRef {
  const bad = (why: string) => new LayerfsError('EUSAGE', `image reference ${JSON.stringify(input)}`, why);
  let rest = input.trim();
  let digest: string | null = null;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST.test(digest)) throw bad('the digest must be sha256:<64 hex>');
  }
  let tag: string | null = null;
  const lastSlash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  if (colon > lastSlash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) throw bad(`bad tag ${JSON.stringify(tag)}`);
  }
  const slash = rest.indexOf('/');
  const first = slash >= 0 ? rest.slice(0, slash) : '';
  let registry: string;
  let repository: string;
  if (slash >= 0 && (first.includes('.') || first.includes(':') || first === 'localhost')) {
    registry = first;
    repository = rest.slice(slash + 1);
  } else {
    registry = 'docker.io';
    repository = rest.includes('/') ? rest : `library/${rest}`;
  }
  if (!repository || !repository.split('/').every((p) => REPO_PART.test(p))) throw bad(`bad repository name ${JSON.stringify(repository)}`);
  if (!tag && !digest) tag = 'latest';
  const endpoint = registry === 'docker.io' ? 'registry-1.docker.io' : registry;
  return { registry, endpoint, repository, tag, digest, reference: digest ?? tag!, name: normalizeName(input.trim()) };
}
