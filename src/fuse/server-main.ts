#!/usr/bin/env node
/** Entry of the FUSE server process (see server-cli.ts for its command line). */
import { serverMain } from './server-cli.js';

void serverMain(process.argv.slice(2));
