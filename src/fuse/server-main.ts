#!/usr/bin/env node
/** Entry of the FUSE server process (see server-cli.ts for its command line). */
import { native } from '../common/native.js';
import { parseServerArgs } from './options.js';
import { serverMain } from './server-cli.js';

const argv = process.argv.slice(2);
// First thing: close what we inherited by accident (fds that were not close-on-exec in the starter, e.g. the CLI's
// LevelDB files: LOCK, LOG, MANIFEST, the log, some of them deleted). A server lives as long as its mount and must
// not pin the root's index (disk space, a tmpfs root that cannot unmount). The starter marks its fds close-on-exec
// before spawning too (spawn.ts); this also covers files a library opened between that and the fork.
native.closeInherited(3, parseServerArgs(argv).readyFd ?? -1);
void serverMain(argv);
