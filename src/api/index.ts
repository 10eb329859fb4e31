export { API, READ_ONLY, type ApiMethod, type ApiArgs, type ApiResult, type Emit } from './methods.js';
export { IndexHolder } from './holder.js';
export { startApiServer, type ApiServer } from './server.js';
export { ApiClient, DaemonGone } from './client.js';
