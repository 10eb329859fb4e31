import { LayerfsError } from '../common/errors.js';

// The distribution reference grammar (github.com/distribution/reference, grammar.go), written out here.
const DOMAIN_COMPONENT = /^(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])$/;
const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const DIGEST = /^[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}$/;
const NAME_MAX = 255;

/** Why `ref` is not a valid image reference, or null when it is. */
export function refProblem(ref: string): string | null {
  let rest = ref;
  const at = rest.indexOf('@');
  if (at >= 0) {
    const d = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST.test(d)) return `bad digest ${JSON.stringify(d)} (want ALGORITHM:HEX, e.g. sha256:<64 hex>)`;
    if (d.startsWith('sha256:') && !/^sha256:[0-9a-f]{64}$/.test(d)) return 'a sha256 digest is 64 lowercase hex digits';
  }
  const slash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  if (colon > slash) {
    const tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (tag.length > 128) return `tag longer than 128 characters (${tag.length})`;
    if (!TAG.test(tag)) return `bad tag ${JSON.stringify(tag)} (letters, digits, _ . -, not starting with . or -)`;
  }
  if (rest === '') return 'no repository name';
  if (rest.length > NAME_MAX) return `repository name longer than ${NAME_MAX} characters (${rest.length})`;
  const parts = rest.split('/');
  const first = parts[0]!;
  // as distribution's splitDockerDomain: the first component is a registry host when it has a '.' or ':', is localhost, or has capitals
  if (parts.length > 1 && first !== '.' && first !== '..' && (first.includes('.') || first.includes(':') || first === 'localhost' || /[A-Z]/.test(first))) {
    const m = /^(\[[0-9a-fA-F:.]+\]|[^:]+)(?::([0-9]+))?$/.exec(first);
    if (!m || (!m[1]!.startsWith('[') && !m[1]!.split('.').every((c) => DOMAIN_COMPONENT.test(c)))) return `bad registry host ${JSON.stringify(first)}`;
    parts.shift();
  }
  for (const p of parts) {
    if (p === '' ) return 'empty path component (// or a leading or trailing /)';
    if (p === '.' || p === '..') return `path component ${JSON.stringify(p)} is not allowed`;
    if (/[A-Z]/.test(p) && PATH_COMPONENT.test(p.toLowerCase())) return `repository name must be lowercase (${JSON.stringify(p)})`;
    if (!PATH_COMPONENT.test(p)) return `bad repository path component ${JSON.stringify(p)} (lowercase letters and digits, separated by . _ __ or -)`;
  }
  return null;
}

/**
 * Check an image name against the distribution reference grammar (lowercase repository, tag of at
 * most 128 characters, digest form, 255 characters of name at most) and normalise it as users
 * expect from docker/podman short of registry defaults: a name without a tag or digest gets
 * `:latest`. (We do not prefix `docker.io/library/`: names are local labels; pulls resolve
 * registries themselves.)
 */
export function normalizeName(ref: string): string {
  const r = ref.trim();
  if (r === '' || /\s/.test(r)) throw new LayerfsError('EUSAGE', `image name ${JSON.stringify(ref)}`, 'not a valid image name (empty or with spaces)');
  const why = refProblem(r);
  if (why) throw new LayerfsError('EUSAGE', `image name ${JSON.stringify(ref)}`, `not a valid image name: ${why}`);
  if (r.includes('@')) return r;
  const lastSlash = r.lastIndexOf('/');
  const last = r.slice(lastSlash + 1);
  return last.includes(':') ? r : `${r}:latest`;
}

/** `sha256:<hex>`, `<hex>` or a unique hex prefix (at least 4 chars) as given by a user. */
export function idPrefix(ref: string): string | null {
  const r = ref.startsWith('sha256:') ? ref.slice(7) : ref;
  return /^[0-9a-f]{4,64}$/.test(r) ? r : null;
}
