export { Service, type ServiceOptions } from './service.js';
export { readStore, rebuildIndex, type StoreSnapshot } from './rebuild.js';
