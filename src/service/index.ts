export { Service, type ServiceOptions, type LayerUsers } from './service.js';
export { checkStoreBeforeFirstBuild, readStore, rebuildIndex, type StoreSnapshot } from './rebuild.js';
