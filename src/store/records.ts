/** The records kept on disk (layer.json, image.json) and mirrored in the index. */

export interface LayerRecord {
  /** RO layers: the chainID hex (no algorithm prefix). RW layers: a random id. */
  id: string;
  parent: string | null;
  /** 'sha256:<hex>' of the uncompressed layer tar; null for RW layers. */
  diffDigest: string | null;
  /** 'sha256:<hex>' of the tar as imported (compressed or not); null for RW layers. */
  compressedDigest: string | null;
  /** Bytes of regular-file content in the layer (as applied). */
  size: number;
  /** Bytes of the tar as imported (compressed or not). */
  compressedSize?: number;
  /** RO layers: how the tar was compressed when it came in (image export writes it back the same way; absent: none). */
  compression?: 'none' | 'gzip' | 'zstd';
  rw: boolean;
  /** ISO timestamp. */
  created: string;
  /** RW layers: the quota in bytes, if one was set. */
  quota?: number;
  /** RW layers: a human name given at creation (`--name`). */
  name?: string;
}

export interface ImageRecord {
  /** The config digest hex (as docker/containerd name images). */
  id: string;
  names: string[];
  /** Layer ids (chainIDs), bottom first. */
  layers: string[];
  topLayer: string | null;
  manifestDigest: string;
  configDigest: string;
  /** Sum of the layers' compressed sizes as imported. */
  size: number;
  created: string;
}

const HEX64 = /^[0-9a-f]{64}$/;

export function isLayerId(id: string): boolean {
  return HEX64.test(id);
}

/** Parse and check a layer.json; returns null when it is not a valid record (caller decides how to report). */
export function parseLayerRecord(text: string): LayerRecord | null {
  try {
    const r = JSON.parse(text) as LayerRecord;
    if (typeof r !== 'object' || r === null) return null;
    if (typeof r.id !== 'string' || !isLayerId(r.id)) return null;
    if (r.parent !== null && (typeof r.parent !== 'string' || !isLayerId(r.parent))) return null;
    if (typeof r.rw !== 'boolean' || typeof r.size !== 'number' || typeof r.created !== 'string') return null;
    return r;
  } catch {
    return null;
  }
}

export function parseImageRecord(text: string): ImageRecord | null {
  try {
    const r = JSON.parse(text) as ImageRecord;
    if (typeof r !== 'object' || r === null) return null;
    if (typeof r.id !== 'string' || !HEX64.test(r.id)) return null;
    if (!Array.isArray(r.names) || !Array.isArray(r.layers) || !r.layers.every((l) => typeof l === 'string' && isLayerId(l))) return null;
    if (typeof r.configDigest !== 'string' || typeof r.manifestDigest !== 'string') return null;
    return r;
  } catch {
    return null;
  }
}
