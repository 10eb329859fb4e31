export { importImage, addROLayer, moveNames, publishApplied, publishImageOf, type AddLayerInput, type ImportResult } from './import.js';
export { openImageSource, configDiffIds, hostPlatform, type ImageSource, type SourceLayer } from './source.js';
export { chainIds, sha256Digest, hexOf } from './digest.js';
export { normalizeName, idPrefix } from './refs.js';
export { pullImage, type PullOptions, type PullResult, type PullEvent, type PullMode } from './registry/pull.js';
export { parseRef, type ImageRef } from './registry/reference.js';
export { RegistryClient, type ClientOptions } from './registry/client.js';
export { dockerConfigCreds, parseCreds, parseChallenges, type Credentials } from './registry/auth.js';
export { exportImage, type ExportOptions, type ExportResult } from './export.js';
