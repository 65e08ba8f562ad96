/**
 * Fewer privileges: once its TUN, sockets and routes are set up, `vpn serve` started as root
 * becomes `user:` (default nobody), keeping CAP_NET_ADMIN alone, the one privilege its later
 * work needs: the routes to the networks behind clients at a registry read, undoing `nat` at
 * exit. `vpn connect` does the same when it has nothing outside its TUN to put back at exit.
 *
 * The server still reads the registry (revocations, each second) and `server.yaml` (`vpn
 * reload`) and writes its leases. {@linkcode openServerFiles} arranges that, as root, before the
 * switch: the PKI directory gets the user's group with passage only (0710), the registry is
 * readable by that group (0640), and `DIR/state` (leases) becomes the user's. The keys stay
 * root's, 0600: the switched server cannot read the CA key, nor replace anything in the PKI
 * directory.
 *
 * @module
 */

import { CAP_NET_ADMIN, dropPrivileges, lookupUser, type UserEntry } from "../../ffi/privileges.ts";
import { prepareStateDir, STATE_DIR } from "../core/leases.ts";
import { octal, refuseUnsafePki, REGISTRY_FILE, REGISTRY_MODE } from "../pki.ts";
import { log } from "../log.ts";

export type { UserEntry };

const logger = log("privileges");

/** The PKI directory's mode once its group is the server user's: passage, no listing. */
const SERVED_DIR_MODE = 0o710;

/** A user that cannot be switched to, or a file it could not reach; the message says the fix. */
export class PrivilegeError extends Error {
  override name = "PrivilegeError";
}

/**
 * Whom to become: `name` when this process runs as root and `name` is not root; undefined
 * when it stays as it is (started as another user, which has no root to give up, or root).
 *
 * @throws {PrivilegeError} for a user this host does not know.
 */
export function switchTarget(name: string, key: string): UserEntry | undefined {
  if (Deno.uid() !== 0 || name === "root") return undefined;
  const user = lookupUser(name);
  if (user === undefined) {
    throw new PrivilegeError(
      `${key}: there is no user "${name}" on this host; create it (useradd --system ` +
        `--no-create-home --shell /usr/sbin/nologin ${name}), or name another (root keeps ` +
        `every privilege)`,
    );
  }
  return user.uid === 0 ? undefined : user;
}

/**
 * Opens to `user` what the server reads and writes after the switch (see the module's doc):
 * the PKI directory `dir`, its registry, its state directory, and `configPath`.
 *
 * @throws {PkiError} for a PKI that group or others may change, or whose keys they may read.
 * @throws {PrivilegeError} when `user` cannot reach `dir` or `configPath` through their parents.
 */
export async function openServerFiles(
  dir: string,
  configPath: string,
  user: UserEntry,
): Promise<void> {
  const pki = await Deno.realPath(dir);
  const config = await Deno.realPath(configPath);
  // A directory others may write is refused as it is, not made safe here and then trusted.
  await refuseUnsafePki(pki);
  refuseUnreachable(pki, user, "the PKI directory");
  refuseUnreachable(config, user, configPath, pki);
  await prepareStateDir(pki);
  const state = `${pki}/${STATE_DIR}`;
  const changed: string[] = [];
  const give = async (path: string, uid: number | null, mode: number) => {
    const info = await Deno.stat(path);
    if (
      (uid === null || info.uid === uid) && info.gid === user.gid && (info.mode! & 0o7777) === mode
    ) {
      return;
    }
    await Deno.chown(path, uid, user.gid);
    await Deno.chmod(path, mode);
    changed.push(`${path} ${octal(mode)}`);
  };
  await give(pki, null, SERVED_DIR_MODE);
  await give(`${pki}/${REGISTRY_FILE}`, null, REGISTRY_MODE);
  await give(state, user.uid, 0o700);
  for await (const entry of Deno.readDir(state)) {
    if (entry.isFile) await give(`${state}/${entry.name}`, user.uid, 0o600);
  }
  const info = await Deno.stat(config);
  if (!allows(info, user, 0o4)) await give(config, null, (info.mode! & 0o7777) | 0o040);
  if (changed.length > 0) {
    logger.info("opened to {name} (group {gid}) what it reads and writes: {changed}", {
      name: user.name,
      gid: user.gid,
      changed: changed.join(", "),
    });
  }
}

/**
 * Becomes `user` for good with CAP_NET_ADMIN alone, and says so.
 *
 * @throws {PrivilegeError} when the switch fails (a container may forbid it).
 */
export function becomeUser(user: UserEntry, key: string): void {
  try {
    dropPrivileges(user, [CAP_NET_ADMIN]);
  } catch (error) {
    throw new PrivilegeError(
      `cannot switch to the user ${user.name} (${key}): ${(error as Error).message}; this ` +
        `process needs CAP_SETUID and CAP_SETGID for it, or set ${key}: root to keep every ` +
        `privilege`,
    );
  }
  logger.info("running as {name} (uid {uid}, gid {gid}), keeping CAP_NET_ADMIN alone", {
    name: user.name,
    uid: user.uid,
    gid: user.gid,
  });
}

/** Throws unless `user` may pass every directory above `path`; `opened` it will pass. */
function refuseUnreachable(path: string, user: UserEntry, what: string, opened?: string): void {
  const parts = path.split("/").filter((part) => part !== "");
  for (let i = 0; i < parts.length; i++) {
    const above = `/${parts.slice(0, i).join("/")}`;
    const info = Deno.statSync(above);
    if (above === opened || allows(info, user, 0o1)) continue;
    throw new PrivilegeError(
      `the user ${user.name} cannot reach ${what} ${path}: ${above} is mode ` +
        `${
          octal(info.mode!)
        } (uid ${info.uid}, gid ${info.gid}); keep it where ${user.name} may pass (such as /etc/vpn), run chmod o+x ` +
        `${above}, or set user: root in server.yaml`,
    );
  }
}

/** Whether `user` (its primary group alone, as after the switch) has `bit` (4 r, 1 x) there. */
function allows(info: Deno.FileInfo, user: UserEntry, bit: number): boolean {
  const mode = info.mode ?? 0;
  if (info.uid === user.uid) return (mode & (bit << 6)) !== 0;
  if (info.gid === user.gid) return (mode & (bit << 3)) !== 0;
  return (mode & bit) !== 0;
}
