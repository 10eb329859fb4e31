export { Service, type ServiceOptions, type LayerUsers } from './service.js';
export { readStore, rebuildIndex, type StoreSnapshot } from './rebuild.js';
