import { LayerfsError } from '../common/errors.js';

/**
 * Normalize an image name the way users expect from docker/podman short of registry defaults:
 * a name without a tag or digest gets `:latest`. (We do not prefix `docker.io/library/`: names
 * are local labels; pulls resolve registries themselves.)
 */
export function normalizeName(ref: string): string {
  const r = ref.trim();
  if (r === '' || /\s/.test(r)) throw new LayerfsError('EUSAGE', `name ${JSON.stringify(ref)}`, 'not a valid image name');
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
