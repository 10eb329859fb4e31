/**
 * The subset of containerd's filter syntax that `ctr snapshots ls` and containerd's garbage
 * collector use: `field==value`, `field!=value`, `field~=regexp` and bare `field` (present),
 * joined by `,` (and); a snapshot matches a list of filters when any one matches (or). Fields:
 * `name`, `parent`, `kind` (view|active|committed, any case), `labels.<key>` (key may be quoted).
 * Values may be quoted. Anything else fails to parse and matches nothing.
 */
import type { SnapshotInfo } from './snapshots.js';

interface Clause {
  field: string[];
  op: '==' | '!=' | '~=' | null;
  value: string;
}

function unquote(s: string): string {
  const t = s.trim();
  if ((t.startsWith('"') && t.endsWith('"')) || (t.startsWith("'") && t.endsWith("'"))) return t.slice(1, -1).replace(/\\(.)/g, '$1');
  if (t.startsWith('/') && t.endsWith('/') && t.length > 1) return t.slice(1, -1);
  return t;
}

/** Split on `sep` outside quotes. */
function split(s: string, sep: string): string[] {
  const out: string[] = [];
  let cur = '';
  let q: string | null = null;
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (q) {
      cur += c;
      if (c === '\\' && i + 1 < s.length) cur += s[++i];
      else if (c === q) q = null;
    } else if (c === '"' || c === "'") {
      q = c;
      cur += c;
    } else if (c === sep) {
      out.push(cur);
      cur = '';
    } else cur += c;
  }
  out.push(cur);
  return out;
}

function parseClause(s: string): Clause {
  const m = /^(.*?)(==|!=|~=)(.*)$/s.exec(s);
  const lhs = m ? m[1]! : s;
  const parts = split(lhs.trim(), '.');
  const field = parts[0] === 'labels' ? ['labels', unquote(parts.slice(1).join('.'))] : parts.map(unquote);
  return { field, op: (m?.[2] as Clause['op']) ?? null, value: m ? unquote(m[3]!) : '' };
}

function fieldOf(info: SnapshotInfo, f: string[]): string | undefined {
  switch (f[0]) {
    case 'name':
      return info.name;
    case 'parent':
      return info.parent;
    case 'kind':
      return info.kind.toLowerCase();
    case 'labels':
      return f[1] !== undefined ? info.labels[f[1]] : undefined;
    default:
      return undefined;
  }
}

function matchClause(c: Clause, info: SnapshotInfo): boolean {
  let v = fieldOf(info, c.field);
  const want = c.field[0] === 'kind' ? c.value.toLowerCase() : c.value;
  if (c.op === null) return v !== undefined && v !== '';
  if (v === undefined) v = '';
  if (c.op === '==') return v === want;
  if (c.op === '!=') return v !== want;
  try {
    return new RegExp(want).test(v);
  } catch {
    return false;
  }
}

export function matches(filter: string, info: SnapshotInfo): boolean {
  if (!filter.trim()) return true;
  return split(filter, ',').every((c) => matchClause(parseClause(c), info));
}

export function matchesAny(filters: string[], info: SnapshotInfo): boolean {
  return filters.some((f) => matches(f, info));
}
