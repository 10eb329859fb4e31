export { importImage, addROLayer, moveNames, type AddLayerInput, type ImportResult } from './import.js';
export { openImageSource, configDiffIds, hostPlatform, type ImageSource, type SourceLayer } from './source.js';
export { chainIds, sha256Digest, hexOf } from './digest.js';
export { normalizeName, idPrefix } from './refs.js';
