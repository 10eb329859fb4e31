export { Service, type ServiceOptions } from './service.js';
export { checkStoreBeforeFirstBuild, readStore, rebuildIndex, type StoreSnapshot } from '../scanner/rebuild.js';
